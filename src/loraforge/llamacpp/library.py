"""llama.cpp in this process, through llama-cpp-python: GGUF loading, logits, file types, quantization."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import numpy as np

from ..device import choice
from ..errors import PipelineError

log = logging.getLogger(__name__)

FLOAT_TYPES = {"f16": "F16", "bf16": "BF16", "f32": "F32"}


def llama_cpp():
    """The llama_cpp module on the libllama of the tools' own build (loraforge.llamacpp.toolchain), or one line
    saying how to get it. ``$LLAMA_CPP_LIB_PATH`` names another libllama (e.g. your CUDA build's)."""
    import os
    import sys

    if "llama_cpp" not in sys.modules and not os.environ.get("LLAMA_CPP_LIB_PATH"):
        from .toolchain import locate

        os.environ["LLAMA_CPP_LIB_PATH"] = str(locate().library_dir())
    try:
        import llama_cpp as lc
    except (ImportError, OSError, RuntimeError) as e:  # pragma: no cover - depends on the install
        raise PipelineError(f"llama-cpp-python is not installed or failed to load ({e}); run `make setup`") from None
    return lc


@cache
def file_types() -> dict[str, int]:
    """llama.cpp file type name (e.g. Q4_K_M) -> LLAMA_FTYPE value, read from the loaded library."""
    lc = llama_cpp()
    types = {}
    for attr in dir(lc):
        if attr.startswith("LLAMA_FTYPE_MOSTLY_"):
            types[attr[len("LLAMA_FTYPE_MOSTLY_") :]] = getattr(lc, attr)
    types["F32"] = lc.LLAMA_FTYPE_ALL_F32
    return types


class GGUFModel:
    """A GGUF loaded in llama.cpp for scoring token sequences."""

    def __init__(self, path: Path, n_ctx: int, threads: int = 1, lora: Path | None = None):
        lc = llama_cpp()
        for p in (path, lora):
            if p is not None and not Path(p).exists():
                raise PipelineError(f"{p}: GGUF file does not exist")
        try:
            self.llm = lc.Llama(
                model_path=str(path),  # the LoRA is attached below: Llama(lora_path=) would turn mmap off
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=n_ctx,
                logits_all=True,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=llama_gpu_layers(),
                verbose=False,
                seed=0,
            )
        except Exception as e:  # llama-cpp-python raises ValueError on load failure
            raise PipelineError(f"{path}: llama.cpp could not load it ({e})") from None
        if lora is not None:
            self._attach(lc, Path(path), Path(lora))
        self.path = Path(path)
        self.n_vocab = self.llm.n_vocab()
        self.n_ctx_train = int(self.llm._model.n_ctx_train()) or n_ctx

    def _attach(self, lc, path: Path, lora: Path) -> None:
        """The LoRA GGUF applied at scale 1 to the memory-mapped base, as ``llama-server --lora`` does.
        llama-cpp-python's own ``lora_path`` loads the whole base into anonymous memory instead (its mmap is off
        with a LoRA, a rule from when llama.cpp merged adapters into the weights): 16 GB for an 8B BF16 base."""
        import ctypes

        adapter = lc.llama_adapter_lora_init(self.llm._model.model, str(lora).encode())
        if adapter is None:
            self.llm.close()
            raise PipelineError(f"{lora}: llama.cpp could not load it as a LoRA of {path}")
        self.llm._stack.callback(lc.llama_adapter_lora_free, adapter)  # freed before the model, on close()
        adapters = (lc.llama_adapter_lora_p_ctypes * 1)(adapter)
        if lc.llama_set_adapters_lora(self.llm._ctx.ctx, adapters, 1, (ctypes.c_float * 1)(1.0)):
            self.llm.close()
            raise PipelineError(f"{lora}: llama.cpp could not apply it to {path}")

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits [len(tokens), n_vocab] (float32) for one sequence, from a fresh context."""
        self.llm.reset()  # eval() then drops the whole KV cache: it clears from n_tokens, now 0
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32, copy=True)

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=add_bos, special=special)

    def adds_bos(self) -> bool:
        lc = llama_cpp()
        return bool(lc.llama_vocab_get_add_bos(lc.llama_model_get_vocab(self.llm._model.model)))

    def info(self) -> dict:
        """File size, parameter count and bits per weight, as llama.cpp reads them."""
        lc = llama_cpp()
        n_params = int(lc.llama_model_n_params(self.llm._model.model))
        size = int(lc.llama_model_size(self.llm._model.model))
        return {
            "file_bytes": self.path.stat().st_size,
            "n_params": n_params,
            "tensor_bytes": size,
            "bits_per_weight": round(size * 8 / n_params, 4),
        }

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> GGUFModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def gguf_info(path: Path) -> dict:
    """GGUFModel.info() of a GGUF that is not loaded already."""
    with GGUFModel(path, n_ctx=8) as m:
        return m.info()


@cache
def llama_gpu_layers() -> int:
    """llama.cpp's n_gpu_layers: all (-1) when it may and can offload to a GPU, else 0."""
    if choice() == "cpu":
        return 0
    if llama_cpp().llama_supports_gpu_offload():
        log.info("llama.cpp offloads every layer to the GPU")
        return -1
    if choice() == "cuda":
        raise PipelineError("device: cuda, but llama.cpp was built without GPU support (see docs/cluster.md: GPU)")
    return 0
