"""An HF causal LM from a local directory, loaded whole."""

from __future__ import annotations

from pathlib import Path


def load_hf_model(model_dir: str | Path, dtype="auto"):
    """An HF causal LM from a local directory (never a hub id: local_files_only)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
