"""The registration steps: read what the pipeline recorded (sidecars) and hand it to the store.

An artifact is registered only as the bytes that were built and measured: its hash must be the one its build
sidecar recorded and the one its evaluation scored. A GGUF changed afterwards (edited in place, copied over) is
refused with one line, never registered.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import PipelineError
from ..evaluation import changed_since_built
from ..evaluation.metrics import Metrics
from ..forms import VLLM_LORA, Kind, form
from ..io.hashing import WORKFLOW_HASH_CACHE, HashCache, tree_fingerprint
from ..io.publish import write_text_atomic
from .core import Registry

log = logging.getLogger(__name__)

TOOLS = ("loraforge", "torch", "transformers", "peft", "safetensors", "llama-cpp-python", "gguf", "snakemake")


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for t in TOOLS:
        try:
            out[t] = version(t)
        except PackageNotFoundError:
            pass
    return out


def _read(path) -> dict:
    return json.loads(Path(path).read_text())


def register_artifact(
    registry,
    name: str,
    gguf,
    gguf_type: str,
    check_json,
    merge_json,
    merged_dir,
    receipt,
    settings: dict,
    metrics_json=None,
    store_mode: str = "copy",
    artifact_settings: dict | None = None,
    merged_settings: dict | None = None,
    lora_metrics_json: list | None = None,
) -> dict:
    """Register one GGUF of an adapter revision (and, once, the merged model it came from) with lineage and
    measured metrics; write a receipt. Idempotent. A LoRA-only revision has no merged model (``merge_json`` and
    ``merged_dir`` None): its lineage is the one its LoRA GGUF's sidecar recorded. ``settings``: what defines the
    version's model; ``artifact_settings``: this GGUF's own build settings (``merged_settings`` the merged
    model's). A LoRA GGUF carries the evaluations of the base GGUF types it was measured on
    (``lora_metrics_json``): one per type, each checked to have scored these LoRA bytes."""
    built = _read(check_json)
    hashes = HashCache(WORKFLOW_HASH_CACHE)
    sha = hashes.sha256(gguf)
    if sha != built.get("sha256"):
        raise PipelineError(changed_since_built(gguf, check_json))
    metrics: dict = {"check": built.get("check", {})}
    if metrics_json:
        evaluation = Metrics.from_json(_read(metrics_json))
        if evaluation.artifact_sha256 != sha:
            raise PipelineError(f"{gguf}: {metrics_json} scored other bytes than these; re-run its evaluation")
        metrics["evaluation"] = evaluation.to_json()
    if lora_metrics_json:
        per_base = {}
        for path in lora_metrics_json:
            data = _read(path)
            if data.get("lora_sha256") != sha:
                raise PipelineError(f"{gguf}: {path} scored another LoRA GGUF than this one; re-run its evaluation")
            measured = Metrics.from_json(data)  # its label is <adapter>/lora-<base type>
            per_base[measured.label.rsplit("/", 1)[-1].removeprefix("lora-")] = measured.to_json()
        metrics["evaluations"] = per_base
    merged = _read(merge_json) if merge_json else None
    inputs = (merged or built).get("inputs")
    if not inputs:
        raise PipelineError(f"{merge_json or check_json}: records no inputs (built by an older loraforge); rebuild it")
    return _register(
        registry=registry,
        store_mode=store_mode,
        name=name,
        inputs=inputs,
        settings=settings,
        kind=form(Kind.GGUF).registry_kind,  # the LoRA GGUF's too: a GGUF file, variant lora-<type>
        variant=gguf_type,
        path=gguf,
        metrics=metrics,
        sha=sha,
        merged=merged,
        merged_dir=merged_dir,
        hashes=hashes,
        receipt=receipt,
        artifact_settings=artifact_settings,
        merged_settings=merged_settings,
    )


def register_ggufs(
    registry,
    name: str,
    ggufs: list,
    gguf_types: list[str],
    check_jsons: list,
    receipts: list,
    settings: dict,
    artifact_settings: dict,
    merge_json=None,
    merged_dir=None,
    metrics_jsons: dict | None = None,
    store_mode: str = "copy",
    merged_settings: dict | None = None,
    lora: dict | None = None,
) -> list[dict]:
    """Register every GGUF of one model's revision, in the order given (one job of the workflow, one receipt each):
    :func:`register_artifact` for each, which is idempotent, so a new type re-registers its siblings as they are.
    ``metrics_jsons``: type -> its evaluation, for the types evaluated; ``artifact_settings``: type -> its own.
    ``lora``: the revision's LoRA GGUF, registered after them (:func:`register_artifact`'s ``gguf``, ``gguf_type``,
    ``check_json``, ``receipt``, ``artifact_settings``, ``lora_metrics_json``)."""
    metrics_jsons = metrics_jsons or {}
    common = dict(registry=registry, name=name, merge_json=merge_json, merged_dir=merged_dir, settings=settings)
    common |= dict(store_mode=store_mode, merged_settings=merged_settings)
    done = [
        register_artifact(
            **common,
            gguf=gguf,
            gguf_type=t,
            check_json=check,
            receipt=receipt,
            metrics_json=metrics_jsons.get(t),
            artifact_settings=dict(artifact_settings[t]),
        )
        for gguf, t, check, receipt in zip(ggufs, gguf_types, check_jsons, receipts, strict=True)
    ]
    return done + ([register_artifact(**common, **lora)] if lora else [])


def register_checkpoint(
    registry,
    name: str,
    variant: str,
    checkpoint,
    check_json,
    receipt,
    settings: dict,
    merge_json=None,
    merged_dir=None,
    base_dir=None,
    adapter_dirs=None,
    weights=None,
    metrics_json=None,
    store_mode: str = "copy",
    artifact_settings: dict | None = None,
    merged_settings: dict | None = None,
) -> dict:
    """Register a GPU-serving form of an adapter revision: a compressed-tensors (GPTQ / AWQ / W8A8) checkpoint directory
    (kind ``hf-quant``, variant the scheme), or for ``vllm-lora-<scheme>`` the adapter's PEFT directory that vLLM serves
    on the base's checkpoint (kind ``vllm-lora``; the base checkpoint's fingerprint is recorded with it). Both are
    stored whole."""
    built = _read(check_json)
    hashes = HashCache(WORKFLOW_HASH_CACHE)
    ck_sha = tree_fingerprint(checkpoint, hashes)
    if ck_sha != built.get("sha256"):
        raise PipelineError(changed_since_built(checkpoint, check_json))
    quantization = {k: built.get(k) for k in ("scheme", "method", "group_size", "bits_per_weight", "calibration")}
    metrics: dict = {
        "check": {k: built["check"][k] for k in ("max_logit_diff", "top1_agreement")},
        "tools": built.get("tools", {}),
    }
    vllm = variant.startswith(VLLM_LORA)
    if vllm:
        if not adapter_dirs or len(adapter_dirs) != 1:
            raise PipelineError(f"{name}: vLLM's multi-LoRA form takes exactly one adapter directory")
        path, kind = Path(adapter_dirs[0]), form(Kind.CHECKPOINT_LORA).registry_kind
        sha = tree_fingerprint(path, hashes)
        metrics["base_checkpoint"] = {"path": str(Path(checkpoint).resolve()), "sha256": ck_sha, **quantization}
    else:
        path, kind, sha = Path(checkpoint), form(Kind.CHECKPOINT).registry_kind, ck_sha
        metrics["quantization"] = quantization
    if metrics_json:
        evaluation = Metrics.from_json(_read(metrics_json))
        if evaluation.artifact_sha256 != ck_sha:
            raise PipelineError(f"{checkpoint}: {metrics_json} scored other files than these; re-run its evaluation")
        metrics["evaluation"] = evaluation.to_json()
    merged = _read(merge_json) if merge_json else None
    if merged:
        inputs = merged.get("inputs")
        if not inputs:
            raise PipelineError(f"{merge_json}: records no inputs (built by an older loraforge); rebuild it")
    else:
        from ..merging import input_lineage

        weights = weights or [1.0] * len(adapter_dirs)
        specs = [{"path": a, "weight": w} for a, w in zip(adapter_dirs, weights, strict=True)]
        inputs = input_lineage(base_dir, specs)
    return _register(
        registry=registry,
        store_mode=store_mode,
        name=name,
        inputs=inputs,
        settings=settings,
        kind=kind,
        variant=variant,
        path=path,
        metrics=metrics,
        sha=sha,
        merged=merged,
        merged_dir=merged_dir,
        hashes=hashes,
        receipt=receipt,
        artifact_settings=artifact_settings,
        merged_settings=merged_settings,
    )


def _register(
    *,
    registry,
    store_mode,
    name,
    inputs,
    settings,
    kind,
    variant,
    path,
    metrics,
    sha,
    merged,
    merged_dir,
    hashes,
    receipt,
    artifact_settings=None,
    merged_settings=None,
) -> dict:
    """Register one artifact (and, once, the merged model of its revision) and write its receipt."""
    lineage = {**inputs, "settings": settings, "tools": tool_versions()}
    merged_sha = tree_fingerprint(merged_dir, hashes) if merged else None
    hashes.save()
    reg = Registry(registry, store_mode=store_mode)
    try:
        mv, new_version, new_artifact = reg.register(
            name, lineage, kind, variant, path, metrics, sha256=sha, settings=artifact_settings, hashes=hashes
        )
        hashes.save()
        if merged:
            reg.register(
                name,
                lineage,
                form(Kind.HF).registry_kind,
                "hf",
                merged_dir,
                {"check": merged.get("check", {})},
                sha256=merged_sha,
                store=False,
                settings=merged_settings,
            )
    finally:
        reg.close()
    log.info(
        "%s %s v%d: %s %s in %s",
        "registered" if new_artifact else "already registered",
        name,
        mv.version,
        variant,
        "(new version)" if new_version else "",
        reg.path,
    )
    art = mv.artifact(variant, kind)
    rec = {
        "registry": str(reg.path.resolve()) if isinstance(reg.path, Path) else reg.path,  # a file, or a URL
        "name": name,
        "version": mv.version,
        "revision": mv.revision,
        "variant": variant,
        "kind": kind,
        "sha256": sha,
        "stored_as": art.store_path,
        "created": new_artifact,
    }
    write_text_atomic(receipt, json.dumps(rec, indent=2) + "\n")
    return rec
