"""llama.cpp's programs run as child processes: the converters and llama-quantize, with llama.cpp's own reason
in the one line when they fail."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from ..errors import PipelineError
from ..io.publish import published_name
from ..progress import run_logged
from .library import FLOAT_TYPES
from .toolchain import LlamaCpp, locate

log = logging.getLogger(__name__)

# words that mark llama.cpp's or Python's own statement of why a program failed
_REASON_WORDS = (
    "error",
    "failed",
    "invalid",
    "cannot",
    "can't",
    "unsupported",
    "not supported",
    "refus",
    "no space left",
    "exception",
    "required",
    "requires",
)


def failure_reason(output: str) -> str:
    """The line that says why, from a failed program's output: the last one naming an error, else the last one.

    Progress bars (tqdm redraws with \\r) and blank lines are never the reason."""
    lines = []
    for raw in output.splitlines():
        line = raw.rsplit("\r", 1)[-1].strip()
        if line and "%|" not in line and not line.startswith(("[", "Writing:")):
            lines.append(line)
    if any("no space left on device" in ln.lower() for ln in lines):
        return "no space left on device"
    for line in reversed(lines):
        if any(w in line.lower() for w in _REASON_WORDS):
            return line[-400:]
    return lines[-1][-400:] if lines else "no output"


def _disk_full(out: Path) -> bool:
    """Whether the output's filesystem is full (some tools report a short write, not ENOSPC)."""
    try:
        st = os.statvfs(out.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (4 << 20)


def run_tool(cmd: list[str], what: str, out: Path, env: dict | None = None, shown_out=None) -> str:
    """Run a llama.cpp program; its output goes to the log (a progress line every 10 s while it runs); a failure is
    one line with its reason."""
    log.info("running %s", " ".join(cmd))
    rc, output = run_logged(cmd, what, env=env)
    log.info("%s output:\n%s", what, output[-8000:])
    if rc != 0 or not out.exists():
        reason = failure_reason(output)
        if reason == "no space left on device" or _disk_full(out):
            raise PipelineError(f"{shown_out or published_name(out)}: no space left on device (writing it with {what})")
        raise PipelineError(f"{what} failed (exit {rc}): {reason}")
    return output


def converter_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("NO_LOCAL_GGUF", None)  # the tree's own gguf-py, of the converter's revision
    return env


def convert_hf_to_gguf(
    model_dir: Path, out: Path, outtype: str, lc: LlamaCpp | None = None, shown_as=None, metadata: Path | None = None
) -> str:
    """llama.cpp's convert_hf_to_gguf.py in a child process (its memory is freed when it exits; no hub access).
    Messages name ``shown_as`` for the model directory when given. Returns the converter's output."""
    if outtype not in FLOAT_TYPES:
        raise PipelineError(f"unsupported GGUF outtype {outtype!r} (one of {', '.join(FLOAT_TYPES)})")
    lc = lc or locate()
    cmd = [
        sys.executable,
        str(lc.script("convert_hf_to_gguf.py")),
        str(model_dir),
        "--outfile",
        str(out),
        "--outtype",
        outtype,
    ]
    if metadata is not None:
        cmd += ["--metadata", str(metadata)]
    return run_tool(cmd, f"llama.cpp's converter on {shown_as or model_dir}", out, env=converter_env())


# llama-quantize's summary when rows of some tensors are not a whole number of the type's blocks (src/llama-quant.cpp)
_FALLBACK = re.compile(r"WARNING: (\d+) of (\d+) tensor\(s\) required fallback quantization")


def quantize_gguf(
    src: Path, dst: Path, qtype: str, threads: int, imatrix: Path | None = None, lc: LlamaCpp | None = None
) -> tuple[str, int]:
    """llama-quantize ``src`` into ``dst`` as ``qtype`` (with an importance matrix when given). Returns the tool and
    how many tensors got a fallback type instead of ``qtype``'s (their rows do not split into its blocks)."""
    lc = lc or locate()
    exe = lc.tool("llama-quantize")
    cmd = [str(exe)]
    if imatrix is not None:
        cmd += ["--imatrix", str(imatrix)]
    cmd += [str(src), str(dst), qtype, str(threads)]
    output = run_tool(cmd, f"llama-quantize {qtype}", dst)
    m = _FALLBACK.search(output)  # llama-quantize says nothing when no tensor needed one
    if m:
        log.warning("%s: %s of %s tensors got a fallback type, not %s's own", dst.name, m[1], m[2], qtype)
    return f"{exe} ({lc.revision})", int(m[1]) if m else 0
