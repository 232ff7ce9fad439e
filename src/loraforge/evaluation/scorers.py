"""What turns token windows into logits: an HF model (torch), the adapters through PEFT, or a GGUF (llama.cpp).

HF models score batches of windows; llama.cpp one window per decode, as llama-perplexity does (batching
windows as parallel sequences changes quantized logits: llama.cpp picks other kernels for larger batches)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import PipelineError


class HFScorer:
    def __init__(self, model, batch: int = 8, compute_dtype: str | None = None):
        from ..device import torch_device

        self.model = model.eval()
        self.batch = _batch(model, batch)
        self.device = torch_device()
        self.compute_dtype = compute_dtype

    def logits(self, windows: np.ndarray) -> Iterator[np.ndarray]:
        import torch

        with torch.no_grad():
            for s in range(0, len(windows), self.batch):
                x = torch.from_numpy(windows[s : s + self.batch].astype(np.int64)).to(self.device)
                yield self.model(x).logits.float().cpu().numpy()

    def info(self) -> dict:
        plan = getattr(self.model, "memory_plan", None)
        out = {"memory_plan": plan} if plan and plan.get("budget_mb") is not None else {}
        if self.compute_dtype:
            out["compute_dtype"] = self.compute_dtype
        return out

    def close(self) -> None:
        streamed = getattr(self.model, "streamed", None)  # PEFT forwards attributes to the model it wraps
        if streamed is not None:
            streamed.close()
        del self.model


class GGUFScorer:
    def __init__(self, path, n_ctx: int, threads: int, lora=None):
        from ..llamacpp.library import GGUFModel

        self.m = GGUFModel(Path(path), n_ctx=n_ctx, threads=threads, lora=Path(lora) if lora else None)

    def logits(self, windows: np.ndarray) -> Iterator[np.ndarray]:
        for w in windows:
            yield self.m.logits(w.tolist())[None]

    def info(self) -> dict:
        return self.m.info()

    def tokenize(self, text: str) -> list[int]:
        """The text's ids from the GGUF's own vocabulary (no BOS, special tokens as text)."""
        return self.m.tokenize(text, add_bos=False, special=False)

    def adds_bos(self) -> bool:
        return self.m.adds_bos()

    def close(self) -> None:
        self.m.close()


def _batch(model, batch: int) -> int:
    """A streamed model reads every weight once per pass: it takes as many windows per pass as its plan allows."""
    plan = getattr(model, "memory_plan", None) or {}
    return plan["batch"] if plan.get("streamed") else batch


def _own_dtype(model_dir, dtype: str) -> tuple[str, str]:
    """("auto" or "float32" for the loaders, the dtype computed in): "auto" is the model's own dtype where this
    device computes it (loraforge.device.compute_dtype), else float32."""
    from ..device import compute_dtype
    from ..models.hf import stored_dtype

    if dtype == "float32":
        return "float32", "float32"
    stored = stored_dtype(model_dir)
    compute = compute_dtype(stored)
    return ("auto" if compute == stored else "float32"), compute


def hf_scorer(model_dir, dtype="auto", batch: int = 8, budget_mb: float | None = None, n_ctx: int = 256) -> HFScorer:
    from ..models.streamed import inference_model

    dtype, compute = _own_dtype(model_dir, dtype)
    return HFScorer(inference_model(model_dir, dtype, budget_mb, n_ctx), batch, compute)


def peft_scorer(
    base_dir, adapters, batch: int = 8, budget_mb: float | None = None, n_ctx: int = 256, dtype="auto"
) -> HFScorer:
    """The base with the adapters applied through PEFT, unmerged; in the base's dtype ("auto") or float32."""
    from ..models.peft import peft_model
    from ..preflight import validate_inputs

    base, loaded = validate_inputs(base_dir, adapters)
    dtype, compute = _own_dtype(base.path, dtype)
    model = peft_model(base.path, loaded, merge_all=False, dtype=dtype, budget_mb=budget_mb, n_ctx=n_ctx)
    return HFScorer(model, batch, compute)


class CheckpointScorer(HFScorer):
    """A compressed-tensors checkpoint (GPTQ / AWQ / W8A8), decompressed by transformers into 16-bit weights and
    computed in its own dtype, as vLLM's W4A16 kernels do (a W8A8 one's activations quantized per token as vLLM's int8 /
    FP8 kernels do: models.hf.quantize_activations); with ``adapters``, the adapter applied through PEFT on top (vLLM's
    multi-LoRA form)."""

    def __init__(self, path, adapters=None, batch: int = 8):
        from ..models.hf import load_checkpoint

        self.sidecar = json.loads(Path(f"{path}.json").read_text())
        dtype, compute = _own_dtype(path, "auto")
        model = load_checkpoint(path, dtype)
        if adapters:
            from peft import PeftModel

            (spec,) = adapters
            model = PeftModel.from_pretrained(model, str(spec["path"]), local_files_only=True)
            if float(spec.get("weight", 1.0)) != 1.0:
                raise PipelineError(
                    f"{spec['path']}: vLLM applies a LoRA at scale 1; a weighted adapter has no such form"
                )
        from ..device import torch_device

        super().__init__(model.to(torch_device()), batch, compute)
        self.adapters = adapters

    def info(self) -> dict:
        out = {"compute_dtype": self.compute_dtype}
        return out if self.adapters else {**out, "bits_per_weight": self.sidecar["bits_per_weight"]}


def checkpoint_scorer(path, adapters=None, batch: int = 8, budget_mb: float | None = None) -> CheckpointScorer:
    """A checkpoint loads whole (decompressed, 2 bytes a weight): refused in one line when that exceeds the memory
    budget, since a packed checkpoint cannot stream layer by layer as an HF model does."""
    sidecar = Path(f"{path}.json")
    if not sidecar.is_file():
        raise PipelineError(f"{path}: no build sidecar {sidecar} (not built by loraforge's quantize_hf)")
    need_mb = json.loads(sidecar.read_text())["n_params"] * 2 / 2**20
    if budget_mb is not None and need_mb > budget_mb:
        raise PipelineError(
            f"{path}: decompressed it needs {need_mb:.0f} MB, over memory.budget_mb {budget_mb:.0f}; a "
            "compressed-tensors checkpoint is evaluated whole: raise the budget or drop hf_quant for this model"
        )
    return CheckpointScorer(path, adapters, batch)
