# Helpers shared by the workflow files: config validation, wildcard constraints, input functions, targets.
import functools
import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

import loraforge
import loraforge.device
from loraforge.errors import PipelineError
from loraforge.io.hashing import WORKFLOW_HASH_CACHE, HashCache, tree_fingerprint
from loraforge.evaluation.windows import read_text
from loraforge.preflight import inspect_base, validate_inputs
from loraforge.quantization import IMATRIX_REQUIRED, row_multiple
from loraforge.quantization.imatrix import overlap
from loraforge.compression import check_spec

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
IMATRIX = config["quantize"]["imatrix"]
# an importance-matrix quant is its own GGUF type, <type>-imat, beside the plain <type>
IMAT_QUANTS = [f"{t}-imat" for t in IMATRIX["types"]] if IMATRIX else []
for _t in QUANTS:
    if _t in IMATRIX_REQUIRED:
        raise WorkflowError(
            f"config quantize.types: {_t} needs an importance matrix: list it under quantize.imatrix.types "
            "(with a calibration text) instead"
        )
GGUF_TYPES = [FLOAT] + QUANTS + IMAT_QUANTS
# a narrowed MLP's width: the row length every GGUF type needs for its own blocks (256 with K-quants)
ROW_MULTIPLE = max(row_multiple(t) for t in GGUF_TYPES)
LORA = config["lora"]["enabled"]
LORA_TYPE = config["lora"]["outtype"].upper()
if "base" in ADAPTERS:
    raise WorkflowError(
        "config adapters.base: 'base' names the base model's own GGUFs (results/gguf/base); rename the adapter"
    )
# compressed models: <adapter>-<spec> -> (adapter, spec)
COMPRESS = config["compress"]
COMPRESSED = {}
if COMPRESS:
    for _a in COMPRESS.get("adapters") or ADAPTERS:
        if _a not in ADAPTERS:
            raise WorkflowError(
                f"config compress.adapters: no adapter {_a!r} (one of {', '.join(ADAPTERS)})"
            )
        for _s in COMPRESS["specs"]:
            COMPRESSED[f"{_a}-{_s}"] = (_a, _s)
    _clash = sorted(set(COMPRESSED) & set(ADAPTERS))
    if _clash:
        raise WorkflowError(
            f"config compress.specs: {_clash[0]} is both an adapter and a compressed model's name; rename one"
        )
# what gets GGUFs: every adapter's merged model, the base itself for the LoRA GGUF form, compressed models
MODELS = ADAPTERS + (["base"] if LORA else []) + list(COMPRESSED)
EVALUATED = ADAPTERS + list(
    COMPRESSED
)  # what has a reference-based evaluation and registry entries
# what gets evaluated for each adapter: PEFT-applied, merged, the float GGUF, every quantized GGUF, and (LoRA
# form) each base GGUF with the adapter's LoRA GGUF
ARTIFACTS = (
    ["adapter", "merged"]
    + GGUF_TYPES
    + ([f"lora-{t}" for t in GGUF_TYPES] if LORA else [])
    + (["pruned", "distilled"] if COMPRESS else [])
)
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
    gguf_type="|".join(re.escape(t) for t in GGUF_TYPES),
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
    if IMATRIX:
        texts["quantize.imatrix.text"] = IMATRIX["text"]
    if COMPRESS:
        texts["compress.text"] = COMPRESS["text"]
    for key, path in texts.items():
        if not produced_here(path):
            try:
                read_text(path)
            except PipelineError as e:
                raise WorkflowError(f"config {key}: {e}") from None
    named = {
        n: p
        for n, p in config["evaluation"]["texts"].items()
        if EVAL and not produced_here(p)
    }
    calibration = {"quantize.imatrix.text": (IMATRIX or {}).get("text")}
    calibration["compress.text"] = (COMPRESS or {}).get("text")
    for key, text in calibration.items():
        if text and not produced_here(text):
            same = overlap(text, named)
            if same:
                raise WorkflowError(
                    f"config {key}: {text} overlaps evaluation.texts.{same}: calibrating on evaluated text makes "
                    "the scores optimistic; use other text"
                )
    if COMPRESS and not produced_here(BASE):
        base_config = inspect_base(BASE).config
        for spec_name, spec in COMPRESS["specs"].items():
            try:
                check_spec(spec, base_config, ROW_MULTIPLE)
            except PipelineError as e:
                raise WorkflowError(f"config compress.specs.{spec_name}: {e}") from None


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
    if wildcards.adapter not in ADAPTERS:
        return []  # a compressed model: no PEFT form
    return [s["weight"] for s in adapter_specs(wildcards.adapter)]


def eval_texts():
    return list(config["evaluation"]["texts"].values())


def artifact_kind(artifact):
    if artifact.startswith("lora-"):
        return "lora"
    return {"adapter": "peft", "merged": "hf", "pruned": "hf", "distilled": "hf"}.get(
        artifact, "gguf"
    )


def compress_spec(name):
    return COMPRESS["specs"][COMPRESSED[name][1]]


def teacher(name):
    """The adapter whose merged model ``name`` is, or was compressed from."""
    return COMPRESSED[name][0] if name in COMPRESSED else name


def model_dir(name):
    """The HF model directory a GGUF of ``name`` is converted from."""
    if name in COMPRESSED:
        stage = "distilled" if compress_spec(name).get("distill") else "pruned"
        return f"results/{stage}/{name}"
    return f"results/merged/{name}"


@functools.cache
def lora_form(name):
    """Whether adapter ``name`` gets the LoRA GGUF form; what llama.cpp cannot load exactly is skipped, logged."""
    from loraforge.conversion.lora import refusal

    if not LORA:
        return False
    specs = adapter_specs(name)
    if len(specs) > 1:
        why = "a stack of several adapters has no single LoRA GGUF"
    elif produced_here(specs[0]["path"]):
        return True  # built by this workflow (the demo's): a plain LoRA
    else:
        try:
            why = refusal(specs)
        except PipelineError:
            return (
                True  # a broken adapter: check_inputs() names the problem in one line
            )
    if why:
        logger.info(
            f"adapter {name}: no LoRA GGUF form ({why}); its merged form builds"
        )
        return False
    return True


def artifacts_of(name):
    """The evaluated artifacts of one adapter or compressed model."""
    if name in COMPRESSED:
        distilled = ["distilled"] if compress_spec(name).get("distill") else []
        return ["pruned"] + distilled + GGUF_TYPES
    return [
        a
        for a in ARTIFACTS
        if a not in ("pruned", "distilled")
        and (not a.startswith("lora-") or lora_form(name))
    ]


# The adapter as a LoRA GGUF (llama.cpp's --lora, Ollama's ADAPTER), for use with the base's GGUFs
LORA_GGUF = f"results/lora/{{adapter}}/{{adapter}}-lora-{LORA_TYPE}.gguf"
IMATRIX_FILE = "results/imatrix/{adapter}.imatrix.gguf"


def gguf_metadata(name):
    """llama.cpp's naming keys for a GGUF of ``name`` (an adapter, or "base")."""
    basename = config["name"] or Path(BASE).resolve().name
    meta = {"general.basename": basename, "general.name": basename}
    if name != "base":
        meta.update({"general.finetune": name, "general.name": f"{basename} {name}"})
    if config["deploy"]["quantized_by"]:
        meta["general.quantized_by"] = config["deploy"]["quantized_by"]
    return meta


# The one path of every GGUF: convert_to_gguf makes the float type, quantize_gguf the others.
GGUF = "results/gguf/{adapter}/{adapter}-{gguf_type}.gguf"


def gguf_of(adapter, gguf_type, what="gguf"):
    """The GGUF of one adapter and type, or its check sidecar (what="check")."""
    path = GGUF.format(adapter=adapter, gguf_type=gguf_type)
    return f"{path}.json" if what == "check" else path


def evaluation_inputs(wildcards):
    """What evaluate_artifact scores: base + adapters (PEFT), the merged dir, a GGUF, or base GGUF + LoRA GGUF."""
    a, art = wildcards.adapter, wildcards.artifact
    if art == "adapter":
        return merge_inputs(wildcards)
    if art.startswith("lora-"):
        t = art[len("lora-") :]
        lora = LORA_GGUF.format(adapter=a)
        return {
            "artifact": gguf_of("base", t),
            "check": gguf_of("base", t, "check"),
            "lora": lora,
            "lora_check": f"{lora}.json",
        }
    if art == "merged":
        return {"artifact": expand(rules.merge_adapter.output.model_dir, adapter=a)[0]}
    if art in ("pruned", "distilled"):
        return {"artifact": f"results/{art}/{a}"}
    return {"artifact": gguf_of(a, art), "check": gguf_of(a, art, "check")}


def register_inputs(wildcards):
    a, t = wildcards.adapter, wildcards.gguf_type
    if (
        t == f"lora-{LORA_TYPE}"
    ):  # the adapter's LoRA GGUF, an artifact of the same revision
        lora = LORA_GGUF.format(adapter=a)
        inputs = {
            "gguf": lora,
            "check": f"{lora}.json",
            "merge": expand(rules.merge_adapter.output.check, adapter=a)[0],
            "merged": model_dir(a),
        }
        if (
            EVAL
        ):  # waits for base + LoRA's evaluation (its gates); its numbers belong to the pair, not the file
            inputs["evaluated"] = expand(
                rules.evaluate_artifact.output.metrics,
                adapter=a,
                artifact=f"lora-{FLOAT}",
            )[0]
        return inputs
    inputs = {
        "gguf": gguf_of(a, t),
        "check": gguf_of(a, t, "check"),
        "merge": expand(rules.merge_adapter.output.check, adapter=teacher(a))[0],
        "merged": model_dir(a),
    }
    if (
        EVAL
    ):  # registration waits for the evaluation, so a failing quality gate blocks it
        inputs["metrics"] = expand(
            rules.evaluate_artifact.output.metrics, adapter=a, artifact=t
        )[0]
    return inputs


# The config values that shape a version's artifacts: with the inputs' contents, what makes a version.
# GGUF naming metadata is part of the bytes; the imatrix text of the -imat types too.
LINEAGE_SETTINGS = {
    "merge": {k: config["merge"][k] for k in ("method", "shard_size_mb")},
    "convert": {
        "outtype": config["convert"]["outtype"],
        "name": config["name"],
        "quantized_by": config["deploy"]["quantized_by"],
    },
}
if IMATRIX:
    LINEAGE_SETTINGS["imatrix"] = {
        "text": IMATRIX["text"],
        "n_ctx": IMATRIX.get("n_ctx", 512),
        "chunks": IMATRIX.get("chunks", 100),
    }


BUDGET_MB = config["memory"]["budget_mb"]
# every job's device (loraforge.device), local or on SLURM
os.environ[loraforge.device.ENV] = config["device"]


def bounded_mem_mb(estimate_mb, runtime_mb=1500):
    """A torch job's mem_mb: its whole-model estimate, or the memory budget (plus the runtime's own) when a model
    that large would stream layer by layer within it."""
    if BUDGET_MB is None:
        return int(estimate_mb)
    return int(min(estimate_mb, BUDGET_MB + runtime_mb))


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
            rules.register_model.output.receipt, adapter=EVALUATED, gguf_type=GGUF_TYPES
        )
        + expand(
            rules.register_model.output.receipt,
            adapter=lora_adapters(),
            gguf_type=f"lora-{LORA_TYPE}",
        )
        if REGISTER
        else []
    )


def promotion_decisions():
    if not config.get("promote"):
        return []
    return expand(rules.promote_revision.output.decision, adapter=ADAPTERS)


def quantize_inputs(wildcards):
    inputs = {"gguf": gguf_of(wildcards.adapter, FLOAT)}
    if wildcards.gguf_type.endswith("-imat"):
        inputs["imatrix"] = IMATRIX_FILE.format(adapter=wildcards.adapter)
    return inputs


def convert_source(wildcards):
    if wildcards.adapter == "base":
        return external(BASE)
    return model_dir(wildcards.adapter)


SPLIT = config["deploy"]["split_max_size"]  # GGUFs over it also as llama.cpp split sets
DEPLOY_TYPE = config["deploy"]["gguf_type"] or (QUANTS[0] if QUANTS else FLOAT)
if DEPLOY_TYPE not in GGUF_TYPES:
    raise WorkflowError(
        f"config deploy.gguf_type: {DEPLOY_TYPE} is not built (one of {', '.join(GGUF_TYPES)})"
    )


def deploy_inputs(wildcards):
    a = wildcards.adapter
    inputs = {
        "merged_gguf": gguf_of(a, DEPLOY_TYPE),
        "merged": expand(rules.merge_adapter.output.model_dir, adapter=a)[0],
        "base": external(BASE),
        "adapters": [external(s["path"]) for s in adapter_specs(a)],
    }
    if lora_form(a):
        inputs["base_gguf"] = gguf_of("base", DEPLOY_TYPE)
        inputs["lora_gguf"] = LORA_GGUF.format(adapter=a)
    if EVAL:
        inputs["metrics"] = expand(
            rules.evaluate_artifact.output.metrics, adapter=a, artifact=artifacts_of(a)
        )
        inputs["base_metrics"] = rules.evaluate_base.output.metrics
    if SPLIT:
        inputs["splits"] = expand(
            rules.split_gguf.output.check, adapter=a, gguf_type=GGUF_TYPES
        )
    return inputs


def build_benchmarks(name, artifact):
    """The benchmark files of the jobs that build one artifact of ``name`` (for the report's build time). The LoRA
    form counts only its own conversion: the base's GGUFs are built once for every adapter.
    """
    if artifact == "adapter":
        return []
    if artifact.startswith("lora-"):
        return [f"benchmarks/convert_lora/{name}.tsv"]
    if name in COMPRESSED:
        steps = [f"benchmarks/prune_model/{name}.tsv"]
        if compress_spec(name).get("distill"):
            steps.append(f"benchmarks/distill_model/{name}.tsv")
    else:
        steps = [f"benchmarks/merge_adapter/{name}.tsv"]
    if artifact in ("merged", "pruned", "distilled"):
        return steps[:1] if artifact != "distilled" else steps
    steps.append(f"benchmarks/convert_to_gguf/{name}-{FLOAT}.tsv")
    if artifact != FLOAT:
        steps.append(f"benchmarks/quantize_gguf/{name}-{artifact}.tsv")
    if artifact.endswith("-imat"):
        steps.append(f"benchmarks/compute_imatrix/{name}.tsv")
    return steps


def lora_adapters():
    return [a for a in ADAPTERS if lora_form(a)]


def deploy_bundles():
    return (
        expand(rules.deploy_bundle.output.bundle, adapter=ADAPTERS)
        if config["deploy"]["enabled"]
        else []
    )


def split_sets():
    return (
        expand(rules.split_gguf.output.split, adapter=EVALUATED, gguf_type=GGUF_TYPES)
        if SPLIT
        else []
    )


def all_targets():
    targets = expand(GGUF, adapter=EVALUATED, gguf_type=GGUF_TYPES)
    targets += expand(LORA_GGUF, adapter=lora_adapters())
    targets += deploy_bundles()
    targets += split_sets()
    if EVAL:
        targets.append(rules.report_quality.output.table)
    targets += registry_receipts()
    targets += promotion_decisions()
    if REGISTER:
        targets.append(rules.render_dashboard.output.html)
    return targets
