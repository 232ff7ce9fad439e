"""Shared pieces of the in-pipeline checks: a fixed check text, HF logits, comparison numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import PipelineError
from .io.publish import write_text_atomic

# A fixed text mixing prose and code, so every check sees both kinds of tokens.
CHECK_TEXT = """The quick brown fox jumps over the lazy dog. Python is a programming language that lets you work
quickly and integrate systems more effectively. A function is defined with the def keyword:

def fibonacci(n):
    \"\"\"Return the n-th Fibonacci number.\"\"\"
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

The for statement is used to iterate over the elements of a sequence (such as a string, tuple or list)
or other iterable object. If the sequence is empty, the loop body is not executed at all.

class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)
"""


def bos_prefix(tok) -> list[int]:
    """[BOS] when the tokenizer puts BOS in front of a text (as llama.cpp's add_bos), else []."""
    if tok.bos_token_id is None:
        return []
    ids = tok("a", add_special_tokens=True).input_ids
    return [tok.bos_token_id] if ids and ids[0] == tok.bos_token_id else []


def context_length(model_dir: str | os.PathLike) -> int | None:
    """The model's trained context length from its config.json (None when it does not say)."""
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.exists():
        return None
    cfg = json.loads(cfg_path.read_text())
    cfg = {**cfg.get("text_config", {}), **cfg}
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    return None


def check_token_ids(model_dir: str | os.PathLike, text_file: str | None = None, max_tokens: int = 256) -> list[int]:
    """Tokens of the check text as the model's own HF tokenizer produces them (with BOS where it adds one),
    at most ``max_tokens`` and never more than the model's context length."""
    from transformers import AutoTokenizer

    text = Path(text_file).read_text(encoding="utf-8") if text_file else CHECK_TEXT
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    ids = bos_prefix(tok) + tok(text, add_special_tokens=False).input_ids
    if len(ids) < 8:
        raise PipelineError(f"{text_file or 'check text'}: too short to check logits ({len(ids)} tokens)")
    return ids[: min(max_tokens, context_length(model_dir) or max_tokens)]


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    from .device import torch_device

    with torch.no_grad():
        return model(torch.tensor([ids], device=torch_device())).logits[0].float().cpu().numpy()


def compare_logits(test: np.ndarray, ref: np.ndarray) -> dict:
    n = min(len(test), len(ref))
    test, ref = test[:n, : ref.shape[1]], ref[:n, : test.shape[1]]
    return {
        "tokens": int(n),
        "max_abs_logit_diff": float(np.abs(test - ref).max()),
        "top1_agreement": float((test.argmax(-1) == ref.argmax(-1)).mean()),
    }


def write_sidecar(path: str | os.PathLike, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
