"""Float GGUF -> quantized GGUF with llama.cpp, checked: it loads and gives finite logits."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_file
from .checks import CHECK_TEXT, compare_logits, write_sidecar
from .errors import PipelineError
from .llamacpp import GGUFModel, quantize_gguf

log = logging.getLogger(__name__)


def quantize(src_gguf: str | os.PathLike, out_gguf: str | os.PathLike, qtype: str, threads: int = 1,
             llama_quantize: str | None = None) -> dict:
    """Quantize a float GGUF to ``qtype`` (any llama.cpp file type name). The file appears only when complete."""
    with atomic_file(out_gguf) as tmp:
        return _quantize_to(src_gguf, tmp, qtype, threads, llama_quantize)


def _quantize_to(src_gguf, out: Path, qtype: str, threads: int, llama_quantize: str | None) -> dict:
    """Run the quantization into ``out``; the caller publishes it."""
    src = Path(src_gguf)
    if not src.exists():
        raise PipelineError(f"{src}: GGUF to quantize does not exist")
    tool = quantize_gguf(src, out, qtype, threads, llama_quantize)
    return {"quant_type": qtype.upper(), "tool": tool}


def _llama_tokens(m: GGUFModel, text: str) -> list[int]:
    return m.llm.tokenize(text.encode(), add_bos=True, special=False)[:256]


def check_quantized(src_gguf, gguf, threads: int = 1) -> tuple[dict, dict]:
    """The quantized model loads, its logits are finite; agreement with the float GGUF is recorded.

    Returns (check, GGUF info) from the one load of the quantized GGUF."""
    q = GGUFModel(Path(gguf), n_ctx=256, threads=threads)
    try:
        ids = _llama_tokens(q, CHECK_TEXT)
        got, info = q.logits(ids), q.info()
    finally:
        q.close()
    if not np.isfinite(got).all():
        raise PipelineError(f"{gguf}: llama.cpp produced non-finite logits")
    f = GGUFModel(Path(src_gguf), n_ctx=256, threads=threads)
    try:
        ref = f.logits(ids)
    finally:
        f.close()
    return {**compare_logits(got, ref), "finite_logits": True, "reference": str(src_gguf)}, info


def quantize_artifact(src_gguf, out_gguf, check_json, qtype: str, threads: int = 1,
                      llama_quantize: str | None = None) -> dict:
    """The quantize_gguf rule: quantize, load and check, publish GGUF and sidecar."""
    out_gguf = Path(out_gguf)
    with atomic_file(out_gguf) as tmp:
        summary = _quantize_to(src_gguf, tmp, qtype, threads, llama_quantize)
        summary["check"], info = check_quantized(src_gguf, tmp, threads)
        summary.update(info)
        log.info("quantized %s: %s", out_gguf, summary)
    write_sidecar(check_json, summary)
    return summary
