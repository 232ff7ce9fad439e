"""The reference every artifact of a model is scored against: the merged HF model's float32 log-probabilities
on the evaluation texts, stored once (float32 with the token ids: float16 would put a KLD floor of ~4e-5 under
every measurement)."""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from ..io.publish import atomic_file
from .metrics import log_softmax
from .scorers import hf_scorer
from .windows import token_windows

log = logging.getLogger(__name__)


def compute_reference(
    model_dir,
    texts: dict[str, str],
    out,
    n_ctx: int = 128,
    max_tokens: int = 4096,
    batch: int = 8,
    budget_mb: float | None = None,
) -> dict:
    """Float32 log-probs of the HF model in ``model_dir`` on every evaluation text -> one safetensors file
    (the model streamed layer by layer when it does not fit ``budget_mb``)."""
    from safetensors.numpy import save_file

    t0 = time.time()
    scorer = hf_scorer(model_dir, dtype="float32", batch=batch, budget_mb=budget_mb, n_ctx=n_ctx)
    tensors, meta = {}, {}
    for name, path in texts.items():
        windows = token_windows(model_dir, path, n_ctx, max_tokens)
        lps = [log_softmax(lg[:, :-1]) for lg in scorer.logits(windows)]
        tensors[f"tokens.{name}"] = windows
        tensors[f"logprobs.{name}"] = np.ascontiguousarray(np.concatenate(lps), dtype=np.float32)
        meta[name] = {"file": str(path), "windows": int(len(windows)), "scored_tokens": int(windows[:, 1:].size)}
    info = {"n_ctx": n_ctx, "texts": meta, "seconds": round(time.time() - t0, 3), "model": str(model_dir)}
    info.update(scorer.info())
    scorer.close()
    with atomic_file(out) as tmp:
        save_file(tensors, str(tmp), metadata={"loraforge": json.dumps(info)})
    log.info("reference logits of %s: %s", model_dir, info)
    return info


def load_reference(path) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(info, token windows per text, reference log-probs per text)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        info = json.loads(f.metadata()["loraforge"])
        tokens = {n: f.get_tensor(f"tokens.{n}") for n in info["texts"]}
        lps = {n: f.get_tensor(f"logprobs.{n}") for n in info["texts"]}
    return info, tokens, lps
