# Helpers shared by the workflow files -- config validation, wildcard constraints, input functions, targets.
import functools
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

import loraforge
from loraforge.errors import PipelineError
from loraforge.hashing import HashCache, tree_fingerprint
from loraforge.merge import validate_inputs


try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as e:  # one line naming the key, not a schema dump
    err = e.__context__  # the jsonschema ValidationError
    if not hasattr(err, "absolute_path"):
        raise
    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    raise WorkflowError(f"config {where}: {err.message}") from None

DEMO = config["demo"]["enabled"]
BASE = config["base_model"]
QUANTS = config["quantize"]["types"]
FLOAT = config["convert"]["outtype"].upper()
THREADS = config["threads"]
EVAL = config["evaluation"]["enabled"]
REGISTER = config["registry"]["enabled"]
GGUF_TYPES = [FLOAT] + QUANTS
# what gets evaluated for each adapter: PEFT-applied, merged, the float GGUF, every quantized GGUF
ARTIFACTS = ["adapter", "merged", FLOAT] + QUANTS
if EVAL and not config["evaluation"]["texts"]:
    raise WorkflowError("config evaluation.texts is empty: name at least one text file, "
                        "or set evaluation.enabled: false")
for _gate in config["evaluation"]["gates"]:
    if _gate not in ARTIFACTS:
        raise WorkflowError(f"config evaluation.gates.{_gate}: no such artifact (one of {', '.join(ARTIFACTS)})")


def adapter_specs(name):
    """The adapter stack of one configured name: [{path, weight}, ...]."""
    entry = config["adapters"][name]
    if isinstance(entry, str):
        return [{"path": entry, "weight": 1.0}]
    return [{"path": e["path"], "weight": float(e.get("weight", 1.0))} for e in entry]


ADAPTERS = list(config["adapters"])
DEMO_BASE = "results/demo/base"
DEMO_ADAPTERS = {f"results/demo/adapters/{d}": d for d in ("code", "prose")}

# Bad input fails here, in a second, before any job runs: headers and JSON only, no weights.
if not DEMO:
    try:
        for _name in ADAPTERS:
            validate_inputs(BASE, adapter_specs(_name))
    except PipelineError as e:
        raise WorkflowError(f"config adapter {_name!r}: {e}") from None
else:
    for _name in ADAPTERS:
        for _s in adapter_specs(_name):
            if _s["path"] not in DEMO_ADAPTERS:
                raise WorkflowError(f"demo.enabled is true but adapter {_name!r} is {_s['path']} "
                                    f"(demo adapters: {', '.join(DEMO_ADAPTERS)})")
    if BASE != DEMO_BASE:
        raise WorkflowError(f"demo.enabled is true but base_model is {BASE} (demo base: {DEMO_BASE})")


wildcard_constraints:
    adapter="|".join(re.escape(a) for a in ADAPTERS),
    quant="|".join(QUANTS),
    domain="code|prose",
    artifact="|".join(re.escape(a) for a in ARTIFACTS),
    gguf_type="|".join(GGUF_TYPES),


# Content fingerprints of external inputs, passed as params: Snakemake reruns a job when a param changes,
# so a touched adapter (same bytes, new mtime) reruns nothing and a changed one reruns its chain, whatever
# its size. Hashes are cached per (path, size, mtime, inode): the base is hashed once, not on every run.
_HASHES = HashCache(".snakemake/loraforge/hashes.json")


@functools.cache  # once per path and invocation, not once per job that names it
def fingerprint(path):
    if DEMO:
        return "built by rules/demo.smk"
    digest = tree_fingerprint(path, _HASHES)
    _HASHES.save()
    return digest


def base_input():
    return DEMO_BASE if DEMO else ancient(BASE)


def merge_inputs(wildcards):
    paths = [s["path"] for s in adapter_specs(wildcards.adapter)]
    return {"base": base_input(), "adapters": paths if DEMO else [ancient(p) for p in paths]}


def eval_texts():
    return list(config["evaluation"]["texts"].values())


def artifact_kind(artifact):
    return {"adapter": "peft", "merged": "hf"}.get(artifact, "gguf")


def evaluation_inputs(wildcards):
    """What evaluate_artifact scores: base + adapters (PEFT), the merged dir, or a GGUF."""
    a, art = wildcards.adapter, wildcards.artifact
    if art == "adapter":
        return merge_inputs(wildcards)
    if art == "merged":
        return {"artifact": f"results/merged/{a}"}
    return {"artifact": f"results/gguf/{a}/{a}-{art}.gguf"}


def input_fingerprints(wildcards):
    return {
        "base": fingerprint(BASE),
        "adapters": [fingerprint(s["path"]) for s in adapter_specs(wildcards.adapter)],
    }


def dir_size_mb(path):
    p = Path(path)
    if not p.exists():
        return 0
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20


def all_targets():
    targets = expand("results/gguf/{adapter}/{adapter}-{quant}.gguf", adapter=ADAPTERS, quant=QUANTS)
    targets += expand(f"results/gguf/{{adapter}}/{{adapter}}-{FLOAT}.gguf", adapter=ADAPTERS)
    if EVAL:
        targets += ["results/report/metrics.html"]
    if REGISTER:
        targets += expand("results/registry/{adapter}/{gguf_type}.json", adapter=ADAPTERS, gguf_type=GGUF_TYPES)
    return targets


def register_inputs(wildcards):
    a, t = wildcards.adapter, wildcards.gguf_type
    gguf = f"results/gguf/{a}/{a}-{t}.gguf"
    inputs = {"gguf": gguf, "check": f"{gguf}.json"}
    if EVAL:  # registration waits for the evaluation, so a failing quality gate blocks it
        inputs["metrics"] = f"results/eval/{a}/{t}.json"
    return inputs


def lineage_settings(wildcards):
    """The config values that shaped an artifact, recorded in the registry."""
    return {
        "merge": config["merge"],
        "convert": {"outtype": config["convert"]["outtype"]},
        "quant_type": wildcards.gguf_type,
        "evaluation": {k: config["evaluation"][k] for k in ("texts", "n_ctx", "max_tokens")},
    }
