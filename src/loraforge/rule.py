"""What every Snakemake script needs: logging into the rule's log file and one clear line on failure."""

from __future__ import annotations

import errno
import inspect
import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable

from .errors import PipelineError

log = logging.getLogger("loraforge")


def disk_full(e: OSError, kwargs: dict) -> str:
    """One line for a full disk, naming the output being written (nothing of it is published)."""
    out = next((v for k, v in kwargs.items() if k.startswith("out") and v), None) or e.filename
    what = "no space left on device" if e.errno == errno.ENOSPC else "disk quota exceeded"
    return f"{out}: {what}; nothing was published" if out else f"{what}; nothing was published"


class ResourceWatch:
    """Wall time and peak memory of a job: this process and its children (llama.cpp's tools, the converter),
    sampled every ``interval`` s, and the kernel's exact high-water mark of this process (VmHWM). ``anon`` is
    memory of the processes' own; the rest of RSS is file pages (a memory-mapped GGUF) the kernel can drop."""

    def __init__(self, interval: float = 0.25):
        import psutil

        self.me, self.interval = psutil.Process(), interval
        self.peak_rss = self.peak_anon = 0
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        rss = anon = 0
        try:
            procs = [self.me, *self.me.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            try:
                m = p.memory_info()
            except psutil.Error:
                continue
            rss, anon = rss + m.rss, anon + m.rss - m.shared
        self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._sample()
        hwm = 0
        try:
            status = open("/proc/self/status").read()
            hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
        except (OSError, StopIteration, ValueError):
            pass
        mb = 1 / 2**20
        return {
            "wall_s": round(time.perf_counter() - self.t0, 2),
            "peak_rss_mb": round(max(self.peak_rss, hwm) * mb),
            "peak_anon_mb": round(self.peak_anon * mb),
            "vm_hwm_mb": round(hwm * mb),
            "max_child_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        }


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
    params = inspect.signature(fn).parameters
    # a rule function that forwards **kwargs (evaluate_artifact, imatrix_artifact) gets the threads too: dropped, the
    # llama.cpp evaluations and llama-imatrix ran on one thread of the job's cores
    if "threads" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs["threads"] = threads
    watch = ResourceWatch()

    def done() -> None:  # before any error line: the error stays the log's last line
        log.info("job resources: %s", json.dumps({"threads": threads, **watch.stop()}))

    try:
        result = fn(**kwargs)
    except PipelineError as e:
        done()
        log.error("%s", e)
        sys.exit(1)
    except OSError as e:
        done()
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            log.exception("unexpected error in %s", getattr(fn, "__qualname__", fn))
            raise
        log.error("%s", disk_full(e, kwargs))
        sys.exit(1)
    except Exception:  # a bug, not bad input: its traceback belongs in the rule's log too
        done()
        log.exception("unexpected error in %s", getattr(fn, "__qualname__", fn))
        raise
    done()
    return result
