"""llama-server on the loopback interface, started for a check and stopped by its PID."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ..errors import PipelineError
from .toolchain import locate

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    log_file = tempfile.NamedTemporaryFile(prefix="llama-server.", suffix=".log", delete=False)
    log.info("starting %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, Path(log_file.name))
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                tail = server.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise PipelineError(f"llama-server exited ({proc.returncode}) loading {gguf}: {' | '.join(tail)}")
            try:
                with urllib.request.urlopen(server.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise PipelineError(f"llama-server did not become ready in {startup_timeout:.0f} s for {gguf}")
            time.sleep(0.2)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log_file.close()
        log.info("llama-server log:\n%s", server.log_path.read_text(errors="replace")[-3000:])
        server.log_path.unlink(missing_ok=True)
