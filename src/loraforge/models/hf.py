"""An HF causal LM from a local directory, loaded whole; a compressed-tensors (GPTQ / AWQ / W8A8) checkpoint
decompressed, its quantized activations quantized as it is served."""

from __future__ import annotations

import inspect
import json
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
    quantize_activations(model, json.loads((Path(path) / "config.json").read_text())["quantization_config"])
    return model.eval()


def quantize_activations(model, quantization_config: dict) -> int:
    """Where a checkpoint quantizes activations (W8A8: dynamic, per token), the same on the inputs of the
    decompressed Linear layers, as compressed-tensors computes it (scale = max |x| / 127.5 for int8, clamped to
    [-128, 127]; max |x| / 448 for FP8 E4M3, cast): transformers decompresses only the weights, so without this the
    stand-in would score a W8A8 checkpoint as if it were W8A16. Returns the number of layers hooked."""
    import re

    import torch

    hooked = 0
    ignore = quantization_config.get("ignore") or []

    def ignored(name: str) -> bool:
        return any(
            re.fullmatch(i[3:], name) if i.startswith("re:") else (name == i or name.endswith("." + i)) for i in ignore
        )

    for group in (quantization_config.get("config_groups") or {}).values():
        act = group.get("input_activations")
        if not act:
            continue
        if not act.get("dynamic") or act.get("strategy") != "token" or not act.get("symmetric", True):
            raise ValueError(f"input activations {act}: only dynamic symmetric per-token quantization is modelled")
        if group.get("targets") != ["Linear"]:
            raise ValueError(f"quantization targets {group.get('targets')}: only ['Linear'] is modelled")
        if act["type"] == "int":
            qmax = 2.0 ** (act["num_bits"] - 1)

            def fake(x, qmax=qmax):
                scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / ((2 * qmax - 1) / 2)
                return (x / scale).round().clamp(-qmax, qmax - 1) * scale
        elif act["type"] == "float" and act["num_bits"] == 8:
            fmax = torch.finfo(torch.float8_e4m3fn).max

            def fake(x, fmax=fmax):
                scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / fmax
                return (x / scale).clamp(-fmax, fmax).to(torch.float8_e4m3fn).to(x.dtype) * scale
        else:
            raise ValueError(f"input activations {act}: only int and FP8 are modelled")

        def hook(module, args, fake=fake):
            return (fake(args[0]), *args[1:])

        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and not ignored(name):
                module.register_forward_pre_hook(hook)
                hooked += 1
    return hooked
