"""Where the compute runs: torch's device and llama.cpp's GPU offload, from the config's ``device``.

``auto`` (the default) takes the GPU when there is one: CUDA for torch when ``torch.cuda.is_available()``, all
layers offloaded for llama.cpp when llama-cpp-python was built with GPU support. ``cpu`` never uses a GPU;
``cuda`` requires one and fails with one line when there is none. The workflow exports the config's choice as
``$LORAFORGE_DEVICE`` to every job (local or on SLURM), so the rules need no parameter for it.
"""

from __future__ import annotations

import functools
import logging
import os

from .errors import PipelineError

log = logging.getLogger(__name__)

CHOICES = ("auto", "cpu", "cuda")
ENV = "LORAFORGE_DEVICE"


def choice() -> str:
    value = os.environ.get(ENV, "auto")
    if value not in CHOICES:
        raise PipelineError(f"${ENV}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


@functools.cache
def torch_device() -> str:
    """ "cuda" or "cpu" for torch, as the config's device says."""
    import torch

    want, has = choice(), torch.cuda.is_available()
    if want == "cuda" and not has:
        raise PipelineError("device: cuda, but torch sees no CUDA device (a CPU build of torch, or no GPU)")
    dev = "cuda" if want != "cpu" and has else "cpu"
    if dev == "cuda":
        log.info("torch runs on %s", torch.cuda.get_device_name(0))
    return dev


# CPU flags of native 16-bit arithmetic (/proc/cpuinfo): x86's AVX512-BF16 / AMX, and Arm's BF16 / FP16 extensions
_NATIVE_16BIT = {
    "bfloat16": ("avx512_bf16", "amx_bf16", "bf16"),
    "float16": ("avx512_fp16", "amx_fp16", "fphp", "asimdhp"),
}


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def compute_dtype(stored: str) -> str:
    """The dtype a model stored in ``stored`` (e.g. "bfloat16") is computed in for evaluation: its own, except
    on a CPU without that 16-bit arithmetic, where torch emulates it about 30 times slower than float32 (measured
    on an AVX2 EPYC: 0.9 against 29.6 GFLOP/s), so it computes in float32 from the same weights. The evaluation
    records the dtype it used (``compute_dtype``); a GPU and a CPU with AVX512-BF16 / AMX compute the stored one."""
    stored = stored.removeprefix("torch.")
    if stored not in _NATIVE_16BIT or torch_device() != "cpu" or cpu_flags() & set(_NATIVE_16BIT[stored]):
        return stored
    _warn_once(stored)
    return "float32"


@functools.cache
def _warn_once(stored: str) -> None:
    log.info(
        "this CPU has no %s arithmetic (torch would emulate it, ~30x slower than float32): %s weights are computed "
        "in float32, recorded as compute_dtype",
        stored,
        stored,
    )
