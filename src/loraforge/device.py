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
