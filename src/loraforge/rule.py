"""What every Snakemake script needs: logging into the rule's log file and one clear line on failure."""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Callable

from .errors import PipelineError

log = logging.getLogger("loraforge")


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
    except Exception:  # a bug, not bad input: its traceback belongs in the rule's log too
        log.exception("unexpected error in %s", getattr(fn, "__qualname__", fn))
        raise
