"""Evaluation texts cut into token windows of n_ctx tokens: BOS (where the tokenizer adds one, as llama.cpp's
add_bos) + text tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checks import bos_prefix, context_length
from ..errors import PipelineError


def read_text(path) -> str:
    """An evaluation text: an existing, non-empty UTF-8 file."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: text file does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PipelineError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if not text.strip():
        raise PipelineError(f"{path}: text file is empty")
    return text


def text_ids(tok, text_file, max_tokens: int) -> list[int]:
    return tok(read_text(text_file), add_special_tokens=False).input_ids[:max_tokens]


def token_windows(tokenizer_dir, text_file, n_ctx: int, max_tokens: int) -> np.ndarray:
    """[n_windows, n_ctx] int32: [BOS] + text tokens per window; the ragged tail is dropped."""
    from transformers import AutoTokenizer

    ctx = context_length(tokenizer_dir)
    if ctx is not None and n_ctx > ctx:
        raise PipelineError(f"evaluation.n_ctx {n_ctx} exceeds the model's context length {ctx} ({tokenizer_dir})")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    prefix = bos_prefix(tok)
    ids = text_ids(tok, text_file, max_tokens)
    span = n_ctx - len(prefix)
    n = len(ids) // span
    if n == 0:
        raise PipelineError(f"{text_file}: {len(ids)} tokens, too short for one evaluation window of {n_ctx}")
    body = np.asarray(ids[: n * span], dtype=np.int32).reshape(n, span)
    if prefix:
        body = np.concatenate([np.full((n, 1), prefix[0], dtype=np.int32), body], axis=1)
    return body
