"""GGUFs for hosts with a per-file limit (Hugging Face: 50 GB): llama.cpp's split format, made by llama-gguf-split.

A GGUF larger than ``max_size`` becomes ``<name>-00001-of-0000N.gguf`` ... in a directory of its own; one that fits
is hard-linked there unchanged (a copy where a link cannot be made). llama.cpp (llama-server, llama-cli, the
Python binding) loads a split set from its first file. The set is checked before it is published: llama.cpp loads
it and gives logits identical to the whole file's on the check text.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np

from ..checks import CHECK_TEXT, write_sidecar
from ..errors import PipelineError
from ..io.hashing import sha256_file
from ..io.publish import atomic_dir
from ..llamacpp.library import GGUFModel
from ..llamacpp.toolchain import locate
from ..llamacpp.tools import run_tool

log = logging.getLogger(__name__)

SIZE = re.compile(r"^([1-9][0-9]*)([MG])$")


def size_bytes(max_size: str) -> int:
    """llama-gguf-split's N(M|G): decimal megabytes or gigabytes."""
    m = SIZE.match(str(max_size))
    if not m:
        raise PipelineError(f"split size {max_size!r}: expected a whole number of M or G, e.g. 50G")
    return int(m.group(1)) * (10**6 if m.group(2) == "M" else 10**9)


def _same_logits(whole: Path, first: Path, threads: int) -> dict:
    with GGUFModel(whole, n_ctx=128, threads=threads) as g:
        ids = g.tokenize(CHECK_TEXT)[:128]
        want = g.logits(ids)
    with GGUFModel(first, n_ctx=128, threads=threads) as g:
        got = g.logits(ids)
    if not np.array_equal(want, got):
        raise PipelineError(
            f"{first}: llama.cpp's logits from the split set differ from the whole file's "
            f"(max abs difference {float(np.abs(want - got).max()):.3g})"
        )
    return {"tokens_compared": len(ids), "logits": "identical to the whole file's"}


def split_gguf(gguf, out_dir, check_json, max_size: str, threads: int = 1, llama_cpp_dir=None) -> dict:
    """The split_gguf rule: ``gguf`` as files of at most ``max_size`` in ``out_dir``, checked; a JSON sidecar.

    The GGUF must still be the bytes its build sidecar (``<gguf>.json``) recorded."""
    from ..evaluation import verify_built

    gguf, out_dir = Path(gguf), Path(out_dir)
    limit = size_bytes(max_size)
    built = Path(f"{gguf}.json")
    sha = verify_built(gguf, built if built.exists() else None) or sha256_file(gguf)
    with atomic_dir(out_dir) as tmp:
        if gguf.stat().st_size <= limit:
            try:
                os.link(gguf, tmp / gguf.name)
            except OSError:
                shutil.copyfile(gguf, tmp / gguf.name)
            check = {"logits": "the whole file, unchanged"}
        else:
            exe = locate(llama_cpp_dir).tool("llama-gguf-split")
            cmd = [str(exe), "--split", "--split-max-size", max_size, str(gguf), str(tmp / gguf.stem)]
            run_tool(cmd, f"llama-gguf-split on {gguf}", tmp, shown_out=out_dir)
            shards = sorted(tmp.glob(f"{gguf.stem}-*-of-*.gguf"))
            if not shards:
                raise PipelineError(f"{gguf}: llama-gguf-split wrote no split files")
            check = _same_logits(gguf, shards[0], threads)
        files = sorted(tmp.glob("*.gguf"))
        big = [f.name for f in files if f.stat().st_size > limit]
        if big:  # llama-gguf-split does not cut a tensor: one larger than the limit stays whole
            raise PipelineError(f"{gguf}: {big[0]} is still larger than {max_size} (one tensor is that large)")
        summary = {
            "source": str(gguf),
            "source_sha256": sha,
            "max_size": max_size,
            "files": [{"name": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files],
            "load_with": files[0].name,
            "check": check,
        }
    write_sidecar(check_json, summary)
    log.info("%s -> %d file(s) in %s: %s", gguf, len(summary["files"]), out_dir, check)
    return summary
