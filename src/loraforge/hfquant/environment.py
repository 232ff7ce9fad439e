"""llm-compressor's own environment: built once in the cache beside the llama.cpp build (``python -m
loraforge.hfquant setup``, run by ``make setup-hfquant``), or named by ``$LORAFORGE_LLMCOMPRESSOR_PYTHON``."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from ..errors import PipelineError

log = logging.getLogger(__name__)

LLMCOMPRESSOR = "llmcompressor==0.14.0.1"
PYTHON_ENV = "LORAFORGE_LLMCOMPRESSOR_PYTHON"


def env_dir() -> Path:
    from ..llamacpp.toolchain import cache_root

    return cache_root() / LLMCOMPRESSOR.replace("==", "-")


def tool_python() -> Path:
    """The Python that has llm-compressor: ``$LORAFORGE_LLMCOMPRESSOR_PYTHON``, else the environment that
    ``python -m loraforge.hfquant setup`` built; else one line saying how to get it."""
    if os.environ.get(PYTHON_ENV):
        p = Path(os.environ[PYTHON_ENV])
        if not p.is_file():
            raise PipelineError(f"${PYTHON_ENV}={p}: no such Python")
        return p
    d = env_dir()
    if not (d / ".complete").is_file():
        raise PipelineError(
            f"hf_quant needs llm-compressor's environment, not built at {d}: run `python -m loraforge.hfquant setup` "
            "(make setup-hfquant does)"
        )
    return d / "bin" / "python"


def tool_versions(python) -> dict:
    import subprocess

    code = (
        "import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
        "('llmcompressor', 'compressed-tensors', 'transformers', 'torch')}))"
    )
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)


def setup_env(torch_spec: str | None = None, force: bool = False) -> Path:
    """A virtual environment with llm-compressor and its pinned transformers, in the cache (once). torch: the same
    version as this environment's (the CPU wheel where this one has it), unless ``torch_spec`` is given."""
    import shutil
    import subprocess
    import sys
    from importlib.metadata import version

    from ..progress import run_logged

    d = env_dir()
    if (d / ".complete").is_file() and not force:
        log.info("llm-compressor's environment: %s (already built)", d)
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)
    pip = [str(d / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    torch_version = version("torch")
    spec = torch_spec or f"torch=={torch_version.split('+')[0]}"
    for what, cmd in (("torch", [*pip, spec]), ("llm-compressor", [*pip, LLMCOMPRESSOR, "numpy"])):
        code, output = run_logged(cmd, f"installing {what} into {d}")
        if code != 0:
            tail = [ln for ln in output.strip().splitlines() if ln.strip()][-1:] or [f"exit status {code}"]
            raise PipelineError(f"{d}: installing {what} failed: {tail[0]}")
    (d / ".complete").write_text(json.dumps(tool_versions(d / "bin" / "python")) + "\n")
    log.info("llm-compressor's environment: %s", d)
    return d


def main(argv: list[str] | None = None) -> int:
    import argparse
    import logging as logging_

    parser = argparse.ArgumentParser(prog="python -m loraforge.hfquant", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="build llm-compressor's environment in the cache (once)")
    setup.add_argument("--torch", help="torch requirement for it (default: this environment's torch version)")
    setup.add_argument("--force", action="store_true", help="rebuild it")
    sub.add_parser("where", help="print the Python that runs llm-compressor")
    args = parser.parse_args(argv)
    logging_.basicConfig(level=logging_.INFO, format="%(message)s")
    try:
        if args.command == "setup":
            setup_env(args.torch, args.force)
        else:
            print(tool_python())
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
