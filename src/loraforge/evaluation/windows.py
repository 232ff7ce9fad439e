"""Evaluation texts cut into token windows: BOS + (n_ctx - 1) text tokens each."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PipelineError


def token_windows(tokenizer_dir, text_file, n_ctx: int, max_tokens: int) -> np.ndarray:
    """[n_windows, n_ctx] int32: BOS + (n_ctx - 1) text tokens per window; the ragged tail is dropped."""
    from transformers import AutoTokenizer

    path = Path(text_file)
    if not path.exists():
        raise PipelineError(f"{path}: evaluation text does not exist")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    ids = tok(path.read_text(encoding="utf-8"), add_special_tokens=False).input_ids[:max_tokens]
    span = n_ctx - 1
    n = len(ids) // span
    if n == 0:
        raise PipelineError(f"{path}: fewer than {span} tokens, too short for one evaluation window of {n_ctx}")
    bos = tok.bos_token_id if tok.bos_token_id is not None else ids[0]
    body = np.asarray(ids[: n * span], dtype=np.int32).reshape(n, span)
    return np.concatenate([np.full((n, 1), bos, dtype=np.int32), body], axis=1)
