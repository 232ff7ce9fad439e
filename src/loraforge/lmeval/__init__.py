"""lm-evaluation-harness, the tool users already have, run against each served artifact (``evaluation.lm_eval``).

A user's own task YAMLs on local data (``include_path``, ``tasks``) run through lm-eval's ``local-chat-completions``
against the llama-server that serves each answering GGUF (the generation checks' server, its template: the GGUF's
own), and the results go into the artifact's metrics. lm-eval lives in its own environment, built once in the cache
beside the llama.cpp build (``python -m loraforge.lmeval setup``, run by ``make setup-lmeval``), or named by
``$LORAFORGE_LMEVAL_PYTHON``; :mod:`.worker` runs there and imports nothing of loraforge.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from ..errors import PipelineError

log = logging.getLogger(__name__)

LM_EVAL = "lm-eval[api]==0.4.13"
PYTHON_ENV = "LORAFORGE_LMEVAL_PYTHON"


def env_dir() -> Path:
    from ..llamacpp.toolchain import cache_root

    return cache_root() / "lm-eval-0.4.13"


def tool_python() -> Path:
    """The Python that has lm-eval: ``$LORAFORGE_LMEVAL_PYTHON``, else the environment setup built; else one line."""
    if os.environ.get(PYTHON_ENV):
        p = Path(os.environ[PYTHON_ENV])
        if not p.is_file():
            raise PipelineError(f"${PYTHON_ENV}={p}: no such Python")
        return p
    d = env_dir()
    if not (d / ".complete").is_file():
        raise PipelineError(
            f"evaluation.lm_eval needs lm-eval's environment, not built at {d}: run `python -m loraforge.lmeval "
            "setup` (make setup-lmeval does)"
        )
    return d / "bin" / "python"


def setup_env(force: bool = False) -> Path:
    """A virtual environment with lm-eval and its API models' requirements (no torch: it only talks HTTP)."""
    import shutil
    import subprocess

    from ..progress import run_logged

    d = env_dir()
    if (d / ".complete").is_file() and not force:
        log.info("lm-eval's environment: %s (already built)", d)
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)
    code, output = run_logged(
        [str(d / "bin" / "python"), "-m", "pip", "install", "--quiet", LM_EVAL], f"installing {LM_EVAL} into {d}"
    )
    if code != 0:
        tail = [ln for ln in output.strip().splitlines() if ln.strip()][-1:] or [f"exit status {code}"]
        raise PipelineError(f"{d}: installing {LM_EVAL} failed: {tail[0]}")
    (d / ".complete").write_text(LM_EVAL + "\n")
    log.info("lm-eval's environment: %s", d)
    return d


def run_tasks(
    url: str,
    server: str,
    include_path,
    tasks: list[str],
    limit: int | None = None,
    model: str = "served",
    check_only: bool = False,
) -> dict:
    """lm-eval's ``tasks`` from ``include_path`` against the chat completions API at ``url`` (``server``:
    "llama-server" or "vllm"): per task its metrics (``values``) and sample count; refused in one line where a task
    needs prompt log-probabilities from a llama-server, or is not in ``include_path``. ``check_only``: only that."""
    from ..progress import run_logged

    python = tool_python()
    with tempfile.TemporaryDirectory(prefix="loraforge-lmeval-") as tmp:
        work = Path(tmp)
        request = {
            "url": url.rstrip("/") + "/v1/chat/completions",
            "server": server,
            "include_path": str(Path(include_path).resolve()),
            "tasks": list(tasks),
            "limit": limit,
            "model": model,
            "check_only": check_only,
            "out": str(work / "out.json"),
        }
        (work / "request.json").write_text(json.dumps(request))
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        what = f"lm-eval {','.join(tasks)} against {server} at {url}"
        code, output = run_logged(
            [str(python), str(Path(__file__).with_name("worker.py")), str(work / "request.json")], what, env=env
        )
        if code != 0:
            errors = [ln for ln in output.splitlines() if ln.startswith("error: ")]
            last = (
                errors[-1].removeprefix("error: ")
                if errors
                else ([ln for ln in output.strip().splitlines() if ln.strip()][-1:] or [f"exit status {code}"])[
                    0
                ].strip()
            )
            raise PipelineError(f"lm-eval: {last}")
        return json.loads((work / "out.json").read_text())


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m loraforge.lmeval", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="build lm-eval's environment in the cache (once)")
    setup.add_argument("--force", action="store_true", help="rebuild it")
    sub.add_parser("where", help="print the Python that runs lm-eval")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "setup":
            setup_env(args.force)
        else:
            print(tool_python())
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
