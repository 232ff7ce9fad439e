"""PEFT itself as a merge: ``merge.method: peft`` (merge_and_unload on the whole model), the reference the
streaming merge is measured against."""

from __future__ import annotations

from pathlib import Path

from ..models.peft import peft_model
from ..preflight import Adapter, AdapterSpec


def peft_merge(base_dir: Path, loaded: list[tuple[AdapterSpec, Adapter]], out: Path, shard_bytes: int) -> dict:
    """``merge.method: peft``: merge_and_unload on the whole model, saved with save_pretrained."""
    model = peft_model(base_dir, loaded, merge_all=True)
    model.save_pretrained(str(out), max_shard_size=shard_bytes)
    return {"tensors_total": len(model.state_dict())}
