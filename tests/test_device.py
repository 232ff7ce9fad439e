"""loraforge.device: the config's device for torch and llama.cpp; asking for a GPU that is not there is one line."""

from __future__ import annotations

import pytest
import torch

from loraforge import device
from loraforge.errors import PipelineError
from loraforge.llamacpp.library import llama_gpu_layers
from loraforge.llamacpp.toolchain import locate


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    device.torch_device.cache_clear()
    llama_gpu_layers.cache_clear()
    yield monkeypatch
    device.torch_device.cache_clear()
    llama_gpu_layers.cache_clear()


def test_cpu_never_offloads(fresh):
    fresh.setenv(device.ENV, "cpu")
    assert device.torch_device() == "cpu" and llama_gpu_layers() == 0


def test_auto_takes_what_this_machine_has(fresh):
    fresh.setenv(device.ENV, "auto")
    # what this machine has, read from how its torch and its llama.cpp were built, not from the code under test
    cuda_build = torch.version.cuda is not None and torch.cuda.device_count() > 0
    args = [a.upper() for a in locate().describe()["cmake_args"]]
    llama_gpu = any(f"GGML_{b}=ON" in a for a in args for b in ("CUDA", "METAL", "VULKAN", "HIP", "SYCL"))
    assert device.torch_device() == ("cuda" if cuda_build else "cpu")
    assert llama_gpu_layers() == (-1 if llama_gpu else 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU for torch")
def test_cuda_without_a_gpu_is_one_line(fresh):
    fresh.setenv(device.ENV, "cuda")
    with pytest.raises(PipelineError, match="device: cuda, but torch sees no CUDA device"):
        device.torch_device()


def test_unknown_device_is_refused(fresh):
    fresh.setenv(device.ENV, "tpu")
    with pytest.raises(PipelineError, match=r"\$LORAFORGE_DEVICE='tpu': expected one of auto, cpu, cuda"):
        device.torch_device()
