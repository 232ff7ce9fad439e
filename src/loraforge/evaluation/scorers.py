"""What turns token windows into logits: an HF model (torch), the adapters through PEFT, or a GGUF (llama.cpp).

HF models score batches of windows; llama.cpp one window per decode, as llama-perplexity does (batching
windows as parallel sequences changes quantized logits: llama.cpp picks other kernels for larger batches)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np


class HFScorer:
    def __init__(self, model, batch: int = 8):
        from ..device import torch_device

        self.model = model.eval()
        self.batch = _batch(model, batch)
        self.device = torch_device()

    def logits(self, windows: np.ndarray) -> Iterator[np.ndarray]:
        import torch

        with torch.no_grad():
            for s in range(0, len(windows), self.batch):
                x = torch.from_numpy(windows[s : s + self.batch].astype(np.int64)).to(self.device)
                yield self.model(x).logits.float().cpu().numpy()

    def info(self) -> dict:
        plan = getattr(self.model, "memory_plan", None)
        return {"memory_plan": plan} if plan and plan.get("budget_mb") is not None else {}

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


def hf_scorer(model_dir, dtype="auto", batch: int = 8, budget_mb: float | None = None, n_ctx: int = 256) -> HFScorer:
    from ..models.streamed import inference_model

    return HFScorer(inference_model(model_dir, dtype, budget_mb, n_ctx), batch)


def peft_scorer(
    base_dir, adapters, batch: int = 8, budget_mb: float | None = None, n_ctx: int = 256, dtype="auto"
) -> HFScorer:
    """The base with the adapters applied through PEFT, unmerged; in the base's dtype ("auto") or float32."""
    from ..models.peft import peft_model
    from ..preflight import validate_inputs

    base, loaded = validate_inputs(base_dir, adapters)
    model = peft_model(base.path, loaded, merge_all=False, dtype=dtype, budget_mb=budget_mb, n_ctx=n_ctx)
    return HFScorer(model, batch)
