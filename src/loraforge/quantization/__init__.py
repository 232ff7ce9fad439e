"""float GGUF -> quantized GGUF with llama.cpp, checked: it loads and gives finite logits."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..checks import CHECK_TEXT, compare_logits, write_sidecar
from ..errors import PipelineError
from ..io.hashing import hashed_meanwhile, remember_hash
from ..io.publish import atomic_file
from ..llamacpp.library import FLOAT_TYPES, GGUFModel, file_types
from ..llamacpp.toolchain import locate
from ..llamacpp.tools import quantize_gguf

log = logging.getLogger(__name__)

# Types whose tensor mix includes IQ1_*, IQ2_*, IQ3_XXS or (in Q2_K_S) Q2_K tensors, which llama.cpp refuses to
# make without an importance matrix (src/llama-quant.cpp, tensor_requires_imatrix).
IMATRIX_REQUIRED = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"})

# Block sizes of the tensor types a llama.cpp file type is made of (ggml's QK_* constants); every other quantized
# type (the K, IQ and TQ families) has 256-value blocks (QK_K).
_ROW_MULTIPLE = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "IQ4_NL": 32, "MXFP4_MOE": 32, "NVFP4": 64}


def row_multiple(qtype: str) -> int:
    """What a tensor's row length must be a multiple of to get ``qtype``'s own blocks (GGUF type names, an
    importance-matrix quant's ``-imat`` too). llama-quantize gives a row of another length a fallback type."""
    t = qtype.upper().removesuffix("-IMAT")
    if t in FLOAT_TYPES.values():
        return 1
    return _ROW_MULTIPLE.get(t, 256)


def _quantize_to(src_gguf, out: Path, qtype: str, threads: int, llama_cpp_dir, imatrix=None) -> dict:
    """Run the quantization into ``out``; the caller publishes it."""
    src = Path(src_gguf)
    if not src.exists():
        raise PipelineError(f"{src}: GGUF to quantize does not exist")
    qtype = qtype.upper()
    if qtype not in file_types():
        raise PipelineError(f"unknown llama.cpp quantization type {qtype!r}")
    if qtype in IMATRIX_REQUIRED and imatrix is None:
        raise PipelineError(f"quantization type {qtype} needs an importance matrix (quantize.imatrix)")
    lc = locate(llama_cpp_dir)
    tool, fallback = quantize_gguf(src, out, qtype, threads, Path(imatrix) if imatrix else None, lc=lc)
    imat = str(imatrix) if imatrix else None
    return {"quant_type": qtype, "tool": tool, "imatrix": imat, "fallback_tensors": fallback}


def quantize(
    src_gguf: str | os.PathLike,
    out_gguf: str | os.PathLike,
    qtype: str,
    threads: int = 1,
    imatrix: str | os.PathLike | None = None,
    llama_cpp_dir: str | os.PathLike | None = None,
) -> dict:
    """Quantize a float GGUF to ``qtype`` with llama-quantize (an importance matrix where given). The file appears
    only when complete."""
    with atomic_file(out_gguf) as tmp:
        return _quantize_to(src_gguf, tmp, qtype, threads, llama_cpp_dir, imatrix)


def check_quantized(src_gguf, gguf, threads: int = 1, reference=None, evaluation_reference=None) -> tuple[dict, dict]:
    """The quantized model loads, its logits are finite; agreement with the float GGUF is recorded, or with
    ``reference``, the float32 log-probs of the HF model the float GGUF was converted from (a merged model's
    evaluation reference: the float GGUF need not run again, a pass of a 16 GB file at 8B).

    With ``evaluation_reference`` the check also records its evaluation's scores of the checked window
    (loraforge.evaluation.reference.window_scores) under ``evaluation_window``.

    Returns (check, GGUF info) from the one load of the quantized GGUF."""
    if reference is not None:
        from ..evaluation.reference import gguf_against_reference

        res, info = gguf_against_reference(gguf, reference, threads, evaluation_reference=evaluation_reference)
        if not res["finite_logits"]:
            raise PipelineError(f"{gguf}: llama.cpp produced non-finite logits")
        return res, info
    with GGUFModel(Path(gguf), n_ctx=256, threads=threads) as q:
        ids = q.tokenize(CHECK_TEXT)[: min(256, q.n_ctx_train)]  # never past the model's context length
        got, info = q.logits(ids), q.info()
    if not np.isfinite(got).all():
        raise PipelineError(f"{gguf}: llama.cpp produced non-finite logits")
    with GGUFModel(Path(src_gguf), n_ctx=256, threads=threads) as f:
        ref = f.logits(ids)
    return {**compare_logits(got, ref), "finite_logits": True, "reference": str(src_gguf)}, info


def quantize_artifact(
    src_gguf,
    out_gguf,
    check_json,
    qtype: str,
    threads: int = 1,
    imatrix=None,
    llama_cpp_dir=None,
    hash_cache=None,
    reference=None,
    evaluation_reference=None,
) -> dict:
    """The quantize_gguf rule: quantize, load and check (against ``reference``, where given: see check_quantized),
    publish GGUF and sidecar (and seed ``hash_cache``, where the workflow's jobs look up file hashes, with the
    GGUF's)."""
    out_gguf = Path(out_gguf)
    with atomic_file(out_gguf) as tmp:
        summary = _quantize_to(src_gguf, tmp, qtype, threads, llama_cpp_dir, imatrix)
        with hashed_meanwhile(tmp) as digest:  # the hash reads the new GGUF while the check runs
            summary["check"], info = check_quantized(src_gguf, tmp, threads, reference, evaluation_reference)
            summary.update(info, sha256=digest())  # what was built: registration refuses other bytes
        window = summary["check"].pop("evaluation_window", None)
        log.info("quantized %s: %s", out_gguf, summary)
        if window:  # the evaluation's scores of the checked window: it scores the others only
            summary["evaluation_window"] = window
    remember_hash(out_gguf, summary["sha256"], hash_cache, digest.blake3())
    write_sidecar(check_json, summary)
    return summary
