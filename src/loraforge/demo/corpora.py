"""The demo's texts, all shipping with Python itself: the standard library's source ("code"), the reference
documentation in ``pydoc_data.topics`` ("prose"), Python's LICENSE.txt ("general"), and for calibration
(importance matrices, distillation) other standard library modules -- never an evaluation text."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from ..errors import PipelineError
from ..io.publish import write_text_atomic

DOMAINS = ("code", "prose")
CODE_TRAIN = [
    "textwrap.py",
    "shlex.py",
    "fnmatch.py",
    "glob.py",
    "bisect.py",
    "heapq.py",
    "colorsys.py",
    "copy.py",
    "dataclasses.py",
]
CODE_HELDOUT = ["string.py", "keyword.py", "queue.py"]
CALIBRATION = ["argparse.py", "calendar.py", "difflib.py", "fractions.py", "statistics.py"]


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_text(files: list[str]) -> str:
    parts = []
    for name in files:
        p = _stdlib() / name
        if not p.exists():
            raise PipelineError(f"{p}: standard library file needed by the demo corpus is missing")
        parts.append(p.read_text(encoding="utf-8"))
    return "\n\n".join(parts)


def hash_bucket(name: str, buckets: int = 5) -> int:
    """Deterministic split (Python's hash() is salted per process)."""
    return sum(name.encode()) % buckets


def corpora() -> dict[str, dict[str, str]]:
    """domain -> {"train": text, "heldout": text}; "general" -> {"heldout"}; "calibration" -> {"train"}."""
    import pydoc_data.topics as topics

    names = sorted(topics.topics)
    lic = _stdlib() / "LICENSE.txt"
    if not lic.exists():
        raise PipelineError(f"{lic}: Python's license text (the demo's general text) is missing")
    return {
        "code": {"train": _stdlib_text(CODE_TRAIN), "heldout": _stdlib_text(CODE_HELDOUT)},
        "prose": {
            "train": "\n\n".join(topics.topics[n] for n in names if hash_bucket(n) != 0),
            "heldout": "\n\n".join(topics.topics[n] for n in names if hash_bucket(n) == 0),
        },
        "general": {"heldout": lic.read_text(encoding="utf-8")},
        "calibration": {"train": _stdlib_text(CALIBRATION)},
    }


def write_texts(out_dir: str | os.PathLike) -> dict[str, Path]:
    """Held-out evaluation texts (code.txt, prose.txt, general.txt), training texts (train-code.txt,
    train-prose.txt) and the calibration text (calibration.txt)."""
    out = Path(out_dir)
    paths = {}
    for name, parts in corpora().items():
        for part, text in parts.items():
            fname = (
                f"{name}.txt"
                if part == "heldout"
                else ("calibration.txt" if name == "calibration" else f"train-{name}.txt")
            )
            paths[fname] = out / fname
            write_text_atomic(paths[fname], text)
    return paths
