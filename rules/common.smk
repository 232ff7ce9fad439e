# Helpers shared by the workflow files: config validation, wildcard constraints, input functions, targets.
import functools
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

import loraforge
from loraforge.errors import PipelineError
from loraforge.io.hashing import WORKFLOW_HASH_CACHE, HashCache, tree_fingerprint
from loraforge.evaluation.windows import read_text
from loraforge.preflight import inspect_base, validate_inputs

try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as e:  # one line naming the key, not a schema dump
    err = e.__context__  # the jsonschema ValidationError
    if not hasattr(err, "absolute_path"):
        raise
    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    raise WorkflowError(f"config {where}: {err.message}") from None

BASE = config["base_model"]
ADAPTERS = list(config["adapters"])
QUANTS = config["quantize"]["types"]
FLOAT = config["convert"]["outtype"].upper()
THREADS = config["threads"]
EVAL = config["evaluation"]["enabled"]
REGISTER = config["registry"]["enabled"]
GGUF_TYPES = [FLOAT] + QUANTS
# what gets evaluated for each adapter: PEFT-applied, merged, the float GGUF, every quantized GGUF
ARTIFACTS = ["adapter", "merged"] + GGUF_TYPES
if EVAL and not config["evaluation"]["texts"]:
    raise WorkflowError(
        "config evaluation.texts is empty: name at least one text file, or set evaluation.enabled: false"
    )
for _gate in config["evaluation"]["gates"]:
    if _gate not in ARTIFACTS:
        raise WorkflowError(
            f"config evaluation.gates.{_gate}: no such artifact (one of {', '.join(ARTIFACTS)})"
        )


def adapter_specs(name):
    """The adapter stack of one configured name: [{path, weight}, ...]."""
    entry = config["adapters"][name]
    if isinstance(entry, str):
        return [{"path": entry, "weight": 1.0}]
    return [{"path": e["path"], "weight": float(e.get("weight", 1.0))} for e in entry]


wildcard_constraints:
    adapter="|".join(re.escape(a) for a in ADAPTERS),
    gguf_type="|".join(GGUF_TYPES),
    artifact="|".join(re.escape(a) for a in ARTIFACTS),


def produced_here(path):
    """Whether this workflow builds ``path`` itself (the demo's inputs). Then the job that makes it checks it, and
    Snakemake tracks it like any other output."""
    return any(r.is_producer(path) for r in workflow.rules)


def check_inputs():
    """Bad input fails here, in a second, before any job runs: headers, JSON and texts only, no weights."""
    if not produced_here(BASE):
        try:
            inspect_base(BASE)
        except PipelineError as e:
            raise WorkflowError(f"config base_model: {e}") from None
    for name in ADAPTERS:
        specs = adapter_specs(name)
        if produced_here(BASE) or any(produced_here(s["path"]) for s in specs):
            continue
        try:
            validate_inputs(BASE, specs)
        except PipelineError as e:
            raise WorkflowError(f"config adapters.{name}: {e}") from None
    texts = {
        f"evaluation.texts.{n}": p
        for n, p in config["evaluation"]["texts"].items()
        if EVAL
    }
    if config["checks"]["text"]:
        texts["checks.text"] = config["checks"]["text"]
    for key, path in texts.items():
        if not produced_here(path):
            try:
                read_text(path)
            except PipelineError as e:
                raise WorkflowError(f"config {key}: {e}") from None


# Content fingerprints of external inputs, passed as params: Snakemake reruns a job when a param changes,
# so a touched adapter (same bytes, new mtime) reruns nothing and a changed one reruns its chain, whatever
# its size. Hashes are cached per (path, size, mtime, inode): the base is hashed once, not on every run.
_HASHES = HashCache(WORKFLOW_HASH_CACHE)


@functools.cache  # once per path and invocation, not once per job that names it
def fingerprint(path):
    if produced_here(path):
        return None  # a file of this workflow: its own job's outputs trigger reruns
    digest = tree_fingerprint(path, _HASHES)
    _HASHES.save()
    return digest


def external(path):
    """An input the workflow does not build: only its content (the fingerprint param) triggers reruns."""
    return path if produced_here(path) else ancient(path)


def merge_inputs(wildcards):
    return {
        "base": external(BASE),
        "adapters": [external(s["path"]) for s in adapter_specs(wildcards.adapter)],
    }


def input_fingerprints(wildcards):
    return {
        "base": fingerprint(BASE),
        "adapters": [fingerprint(s["path"]) for s in adapter_specs(wildcards.adapter)],
    }


def adapter_weights(wildcards):
    return [s["weight"] for s in adapter_specs(wildcards.adapter)]


def eval_texts():
    return list(config["evaluation"]["texts"].values())


def artifact_kind(artifact):
    return {"adapter": "peft", "merged": "hf"}.get(artifact, "gguf")


# The one path of every GGUF: convert_to_gguf makes the float type, quantize_gguf the others.
GGUF = "results/gguf/{adapter}/{adapter}-{gguf_type}.gguf"


def gguf_of(adapter, gguf_type, what="gguf"):
    """The GGUF of one adapter and type, or its check sidecar (what="check")."""
    path = GGUF.format(adapter=adapter, gguf_type=gguf_type)
    return f"{path}.json" if what == "check" else path


def evaluation_inputs(wildcards):
    """What evaluate_artifact scores: base + adapters (PEFT), the merged dir, or a GGUF."""
    a, art = wildcards.adapter, wildcards.artifact
    if art == "adapter":
        return merge_inputs(wildcards)
    if art == "merged":
        return {"artifact": expand(rules.merge_adapter.output.model_dir, adapter=a)[0]}
    return {"artifact": gguf_of(a, art), "check": gguf_of(a, art, "check")}


def register_inputs(wildcards):
    a, t = wildcards.adapter, wildcards.gguf_type
    inputs = {
        "gguf": gguf_of(a, t),
        "check": gguf_of(a, t, "check"),
        "merge": expand(rules.merge_adapter.output.check, adapter=a)[0],
        "merged": expand(rules.merge_adapter.output.model_dir, adapter=a)[0],
    }
    if (
        EVAL
    ):  # registration waits for the evaluation, so a failing quality gate blocks it
        inputs["metrics"] = expand(
            rules.evaluate_artifact.output.metrics, adapter=a, artifact=t
        )[0]
    return inputs


# The config values that shape a version's artifacts: with the inputs' contents, what makes a version.
LINEAGE_SETTINGS = {
    "merge": {k: config["merge"][k] for k in ("method", "shard_size_mb")},
    "convert": {"outtype": config["convert"]["outtype"]},
}


def dir_size_mb(path):
    p = Path(path)
    if not p.exists():
        return 0
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20


PROMOTE_QUANT = (config.get("promote") or {}).get("candidate_quant")
if config.get("promote"):
    if not REGISTER or not EVAL:
        raise WorkflowError(
            "config promote: needs registry.enabled and evaluation.enabled"
        )
    if PROMOTE_QUANT not in GGUF_TYPES:
        raise WorkflowError(
            f"config promote.candidate_quant: {PROMOTE_QUANT} is not built (one of {', '.join(GGUF_TYPES)})"
        )
    for _text in config.get("promote")["require"]:
        if _text not in config["evaluation"]["texts"]:
            raise WorkflowError(
                f"config promote.require.{_text}: no such evaluation text (one of {', '.join(config['evaluation']['texts'])})"
            )


def gguf_size_mb(adapter, gguf_type):
    p = Path(gguf_of(adapter, gguf_type))
    return p.stat().st_size / 2**20 if p.exists() else 0


def registry_receipts():
    return (
        expand(
            rules.register_model.output.receipt, adapter=ADAPTERS, gguf_type=GGUF_TYPES
        )
        if REGISTER
        else []
    )


def promotion_decisions():
    if not config.get("promote"):
        return []
    return expand(rules.promote_revision.output.decision, adapter=ADAPTERS)


def all_targets():
    targets = expand(GGUF, adapter=ADAPTERS, gguf_type=GGUF_TYPES)
    if EVAL:
        targets.append(rules.report_quality.output.table)
    targets += registry_receipts()
    targets += promotion_decisions()
    if REGISTER:
        targets.append(rules.render_dashboard.output.html)
    return targets
