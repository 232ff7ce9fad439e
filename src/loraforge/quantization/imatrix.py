"""Importance matrices with llama-imatrix: per-weight activation statistics of a float GGUF on a calibration text,
which llama-quantize uses to spend its few bits where the model's activations are (``--imatrix``).

The calibration text must not be one of the evaluation texts: an imatrix tuned on the scored text would make the
scores of its quants optimistic. The workflow refuses overlap by content before any job runs (:func:`overlap`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..checks import write_sidecar
from ..errors import PipelineError
from ..io.hashing import sha256_file
from ..io.publish import atomic_file
from ..llamacpp.toolchain import locate
from ..llamacpp.tools import run_tool

log = logging.getLogger(__name__)


def overlap(calibration, texts: dict[str, str]) -> str | None:
    """The name of an evaluation text that the calibration text is, or contains, or is part of; else None."""
    cal = Path(calibration).read_bytes().strip()
    for name, path in texts.items():
        other = Path(path).read_bytes().strip()
        if cal and other and (cal in other or other in cal):
            return name
    return None


def compute_imatrix(gguf, text, out, n_ctx: int = 512, chunks: int = 100, threads: int = 1, llama_cpp_dir=None) -> dict:
    """llama-imatrix over ``text`` (at most ``chunks`` windows of ``n_ctx`` tokens) into ``out`` (GGUF format)."""
    gguf, text = Path(gguf), Path(text)
    for p, what in ((gguf, "GGUF"), (text, "calibration text")):
        if not p.is_file():
            raise PipelineError(f"{p}: {what} for the importance matrix does not exist")
    lc = locate(llama_cpp_dir)
    exe = lc.tool("llama-imatrix")
    with atomic_file(out) as tmp:
        cmd = [
            str(exe),
            "-m",
            str(gguf),
            "-f",
            str(text),
            "-o",
            str(tmp),
            "--output-format",
            "gguf",
            "-c",
            str(n_ctx),
            "--chunks",
            str(chunks),
            "-t",
            str(threads),
            "--no-ppl",
        ]
        output = run_tool(cmd, f"llama-imatrix on {gguf.name}", tmp, shown_out=out)
        summary = {
            "gguf": str(gguf),
            "gguf_sha256": sha256_file(gguf),
            "text": str(text),
            "text_sha256": sha256_file(text),
            "n_ctx": n_ctx,
            "chunks_max": chunks,
            "chunks": _chunks_done(output),
            "tool": f"{exe} ({lc.revision})",
            "sha256": sha256_file(tmp),
        }
    log.info("importance matrix %s: %s", out, summary)
    return summary


def _chunks_done(output: str) -> int | None:
    """How many chunks llama-imatrix computed, from its log ("computing over N chunks ...")."""
    import re

    m = re.search(r"computing over (\d+) chunks", output)
    return int(m.group(1)) if m else None


def imatrix_artifact(gguf, text, out, check_json, **kwargs) -> dict:
    """The compute_imatrix rule: the matrix and a sidecar naming what it was computed from."""
    summary = compute_imatrix(gguf, text, out, **kwargs)
    write_sidecar(check_json, summary)
    return summary
