"""An HF causal LM from a local directory, loaded whole; a compressed-tensors (GPTQ / AWQ) checkpoint decompressed."""

from __future__ import annotations

import inspect
from pathlib import Path


def load_hf_model(model_dir: str | Path, dtype="auto"):
    """An HF causal LM from a local directory (never a hub id: local_files_only)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)


def stored_dtype(model_dir) -> str:
    """The dtype a model directory's config.json says its weights are in ("float32" when it says none)."""
    import json

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").removeprefix("torch.")


def load_checkpoint(path, dtype="auto"):
    """A compressed-tensors checkpoint through transformers, decompressed into plain 16-bit Linear layers (what
    runs on a CPU and what PEFT can wrap); ``dtype`` "float32" computes in float32."""
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    # transformers >= 5.20 names it dequantize=True; older ones run_compressed=False
    params = inspect.signature(CompressedTensorsConfig).parameters
    config = CompressedTensorsConfig(**({"dequantize": True} if "dequantize" in params else {"run_compressed": False}))
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, quantization_config=config)
    if dtype == "float32":
        model = model.float()
    return model.eval()
