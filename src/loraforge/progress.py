"""Progress of a long step as lines in the job's log (done/total, rate, ETA), at most every ``every`` seconds.

A job's log is a file that people ``tail -f`` or read after the fact, and on SLURM it is all they see: one plain
line per interval reads well there, where a progress bar's carriage-return redraws do not. The first line comes
after ``every`` seconds, so a step that ends sooner logs only its summary. Child programs (llama.cpp's tools, the
converter, the compiler) get the same: ``run_logged`` logs their latest output line while they run."""

from __future__ import annotations

import logging
import os
import re
import select
import subprocess
import time

log = logging.getLogger("loraforge.progress")


def amount(n: float, unit: str) -> str:
    """``n`` of ``unit``, bytes ("B") in binary multiples (1.5 GiB), anything else as a plain count."""
    if unit == "B":
        for u in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(n) < 1024 or u == "TiB":
                return f"{n:.0f} {u}" if u == "B" else f"{n:.1f} {u}"
            n /= 1024
    return f"{n:,.0f} {unit}".rstrip() if n >= 100 else f"{n:.3g} {unit}".rstrip()


def duration(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """``with Progress("merging", total_bytes, "B") as p: ... p.update(n)``: a log line with what is done, the rate
    and the time left every ``every`` seconds, and one summary line at the end."""

    def __init__(self, what: str, total: float, unit: str = "", every: float = 10.0, logger=None, clock=None):
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.log = logger or log
        self.clock = clock or time.monotonic
        self.done = 0.0
        self.t0 = self.clock()
        self.next_at = self.t0 + every
        self.lines = 0

    def line(self) -> str:
        el = self.clock() - self.t0
        rate = self.done / el if el > 0 else 0.0
        text = f"{self.what}: {amount(self.done, self.unit)} of {amount(self.total, self.unit)}"
        if self.total:
            text += f" ({100 * self.done / self.total:.0f}%)"
        text += f", {amount(rate, self.unit)}/s, {duration(el)} elapsed"
        if rate > 0 and self.total > self.done:
            text += f", about {duration((self.total - self.done) / rate)} left"
        return text

    def update(self, n: float = 1) -> None:
        self.done += n
        now = self.clock()
        if now >= self.next_at:
            self.log.info("%s", self.line())
            self.lines += 1
            self.next_at = now + self.every

    def close(self) -> None:
        el = self.clock() - self.t0
        if self.lines or el >= self.every:
            self.log.info("%s done: %s in %s", self.what, amount(self.done, self.unit), duration(el))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()


# "[ 12/291]" (llama-quantize's tensors), "[ 45%]" (cmake's build): where a program says how far it is
_STEP = re.compile(r"\[\s*(\d+)\s*/\s*(\d+)\s*\]")
_PERCENT = re.compile(r"\[\s*(\d+)%\]")


def tool_line(what: str, output_tail: str, elapsed: float) -> str:
    """A progress line for a child program: its own last line of output, the time elapsed and, where that line
    says how far it is (step i of n, or a percentage), the time left at the rate so far."""
    lines = [ln.strip() for ln in re.split(r"[\r\n]", output_tail) if ln.strip()]
    last = lines[-1][:200] if lines else "no output yet"
    done = None
    if m := _STEP.search(last):
        done = int(m[1]) / max(1, int(m[2]))
    elif m := _PERCENT.search(last):
        done = int(m[1]) / 100
    text = f"{what}: {duration(elapsed)} elapsed"
    if done:
        text += f", {100 * done:.0f}% done, about {duration(elapsed * (1 - done) / done)} left"
    return f"{text}; last output: {last}"


def run_logged(cmd: list[str], what: str, env: dict | None = None, every: float = 10.0, logger=None) -> tuple[int, str]:
    """Run a program, logging a progress line every ``every`` seconds while it runs (see ``tool_line``); returns
    its exit status and its whole output (stdout and stderr, interleaved as written)."""
    logger = logger or log
    t0 = time.monotonic()
    next_at = t0 + every
    chunks: list[bytes] = []
    tail = ""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc:
        fd = proc.stdout.fileno()
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, next_at - time.monotonic()))
            if ready:
                data = os.read(fd, 1 << 16)
                if not data:
                    break
                chunks.append(data)
                tail = (tail + data.decode(errors="replace"))[-4096:]
            now = time.monotonic()
            if now >= next_at:
                logger.info("%s", tool_line(what, tail, now - t0))
                next_at = now + every
        rc = proc.wait()
    return rc, b"".join(chunks).decode(errors="replace")
