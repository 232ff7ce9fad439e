"""llama-server on the loopback interface, started for a check and stopped by its PID."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ..errors import PipelineError
from ..serving import free_port, local_server
from .toolchain import locate

log = logging.getLogger(__name__)


class Server:
    """A running llama-server: ``url``, and small JSON helpers for its HTTP API."""

    def __init__(self, url: str, proc: subprocess.Popen, log_path: Path):
        self.url, self.proc, self.log_path = url, proc, log_path

    def request(self, path: str, body: dict | list | None = None, timeout: float = 120) -> dict | list:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise PipelineError(f"llama-server {path}: HTTP {e.code}: {e.read().decode()[:300]}") from None

    def apply_template(self, messages: list[dict], kwargs: dict | None = None) -> str:
        """The prompt llama-server renders for ``messages`` with the model's chat template (its jinja engine)."""
        body = {"messages": messages, "chat_template_kwargs": kwargs or {}}
        return self.request("/apply-template", body)["prompt"]


@contextlib.contextmanager
def llama_server(
    gguf,
    loras: list | None = None,
    n_ctx: int = 2048,
    threads: int = 2,
    extra: list[str] | None = None,
    llama_cpp_dir=None,
    startup_timeout: float = 120,
) -> Iterator[Server]:
    """Start llama-server for ``gguf`` (and LoRA GGUFs) on 127.0.0.1; stop it by PID on exit."""
    exe = locate(llama_cpp_dir).tool("llama-server")
    port = free_port()
    cmd = [
        str(exe),
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ctx-size",
        str(n_ctx),
        "--threads",
        str(threads),
        "--no-webui",
        "--jinja",
        "--parallel",
        "1",
    ]
    for lora in loras or []:
        cmd += ["--lora", str(lora)]
    cmd += extra or []
    url = f"http://127.0.0.1:{port}"
    with local_server(cmd, url, f"llama-server ({gguf})", startup_timeout) as (proc, log_path):
        yield Server(url, proc, log_path)
