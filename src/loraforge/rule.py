"""What every Snakemake script needs: logging into the rule's log file and one clear line on failure."""

from __future__ import annotations

import errno
import inspect
import logging
import os
import sys
from collections.abc import Callable

from .errors import PipelineError

log = logging.getLogger("loraforge")


def disk_full(e: OSError, kwargs: dict) -> str:
    """One line for a full disk, naming the output being written (nothing of it is published)."""
    out = next((v for k, v in kwargs.items() if k.startswith("out") and v), None) or e.filename
    what = "no space left on device" if e.errno == errno.ENOSPC else "disk quota exceeded"
    return f"{out}: {what}; nothing was published" if out else f"{what}; nothing was published"


def run(log_file: str, fn: Callable, threads: int = 1, **kwargs):
    """Call ``fn(**kwargs)`` with logging to ``log_file``; a PipelineError exits 1 with its one line."""
    handlers = [logging.FileHandler(log_file, mode="w"), logging.StreamHandler(sys.stderr)]
    logging.basicConfig(
        level=logging.INFO, handlers=handlers, force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # torch (imported later, only by the rules that need it) and numpy's BLAS read these at import
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(max(1, int(threads)))
    if "torch" in sys.modules:  # already imported by the script's module
        sys.modules["torch"].set_num_threads(max(1, int(threads)))
    if "threads" in inspect.signature(fn).parameters:
        kwargs["threads"] = threads
    try:
        return fn(**kwargs)
    except PipelineError as e:
        log.error("%s", e)
        sys.exit(1)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            log.exception("unexpected error in %s", getattr(fn, "__qualname__", fn))
            raise
        log.error("%s", disk_full(e, kwargs))
        sys.exit(1)
    except Exception:  # a bug, not bad input: its traceback belongs in the rule's log too
        log.exception("unexpected error in %s", getattr(fn, "__qualname__", fn))
        raise
