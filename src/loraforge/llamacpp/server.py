"""llama-server on the loopback interface, started for a check and stopped by its PID."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ..errors import PipelineError
from ..serving import await_health, free_port, local_server
from .toolchain import locate

log = logging.getLogger(__name__)

# llama.cpp's CPU threads are an OpenMP team (libgomp), and an idle team spins GOMP_SPINCOUNT times (300,000 by
# default) before it sleeps. A llama-server started beside work on the same cores (wait=False: it loads while the
# evaluation scores with llama.cpp's library) spun through its load and held the scorer's threads off their cores:
# measured on the demo's 135M GGUFs on 2 cores, the scorer's first 256-token window took 5 to 10 s instead of
# 1 s, every evaluation. 1,000 spins remove that and leave decoding as fast (72-88 tokens/s either way); libgomp
# itself spins 100 to 1,000 times when it has more threads than cores. A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT
# is kept.
SPINCOUNT = "1000"


def server_env() -> dict[str, str]:
    """The environment of a llama-server this package starts: the caller's, with a short OpenMP spin."""
    env = dict(os.environ)
    if "GOMP_SPINCOUNT" not in env and "OMP_WAIT_POLICY" not in env:
        env["GOMP_SPINCOUNT"] = SPINCOUNT
    return env


class Server:
    """A running llama-server: ``url``, and small JSON helpers for its HTTP API."""

    def __init__(self, url: str, proc: subprocess.Popen, log_path: Path, ready=None):
        self.url, self.proc, self.log_path = url, proc, log_path
        self._ready = ready  # started without waiting (llama_server(wait=False)): what waits for its health

    def ready(self) -> Server:
        """Wait until it answers (a server started with ``wait=False`` loads while its caller works)."""
        if self._ready is not None:
            self._ready()
            self._ready = None
        return self

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
    wait: bool = True,
) -> Iterator[Server]:
    """Start llama-server for ``gguf`` (and LoRA GGUFs) on 127.0.0.1; stop it by PID on exit. ``wait=False``:
    yield while it loads; ``Server.ready()`` waits for it."""
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
    what, started = f"llama-server ({gguf})", time.monotonic()
    with local_server(cmd, url, what, startup_timeout, env=server_env(), wait=wait) as (proc, log_path):
        ready = None if wait else functools.partial(await_health, proc, url, what, started, startup_timeout, log_path)
        yield Server(url, proc, log_path, ready)
