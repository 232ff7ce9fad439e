"""Progress lines in a job's log: what is done, the rate and the time left, at most every interval, for loops in
this process and for child programs (llama.cpp's tools, the converter, the compiler)."""

from __future__ import annotations

import logging
import sys

from loraforge.progress import Progress, amount, duration, run_logged, tool_line


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_line_every_interval_with_rate_and_time_left(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="loraforge.progress")
    with Progress("merging", 4 * 2**30, "B", every=10, clock=clock) as p:
        for _ in range(8):  # 512 MiB every 4 s: 128 MiB/s
            clock.t += 4
            p.update(2**29)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # at 12 s and 24 s, then the summary at 32 s
    assert lines[0] == "merging: 1.5 GiB of 4.0 GiB (38%), 128.0 MiB/s, 12s elapsed, about 20s left"
    assert lines[1].startswith("merging: 3.0 GiB of 4.0 GiB (75%)") and lines[1].endswith("about 8s left")
    assert lines[2] == "merging done: 4.0 GiB in 32s"


def test_a_short_step_logs_nothing_but_a_failure_no_summary(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="loraforge.progress")
    with Progress("evaluating", 100, "tokens", clock=clock) as p:
        clock.t = 3
        p.update(100)
    assert caplog.records == []
    try:
        with Progress("evaluating", 100, "tokens", clock=clock) as p:
            clock.t = 30
            p.update(10)
            raise ValueError("boom")
    except ValueError:
        pass
    assert [r.getMessage() for r in caplog.records] == [
        "evaluating: 10 tokens of 100 tokens (10%), 0.37 tokens/s, 27s elapsed, about 4m03s left"
    ]


def test_units_and_durations_read_as_people_write_them():
    assert amount(1536, "B") == "1.5 KiB" and amount(512, "B") == "512 B" and amount(12345, "tokens") == "12,345 tokens"
    assert duration(59.6) == "1m00s" and duration(3725) == "1h02m" and duration(-1) == "0s"


def test_a_tools_own_step_count_or_percentage_gives_the_time_left():
    q = tool_line("llama-quantize Q4_K_M", "[  10/ 40]  blk.2.attn_q.weight - converting\n", 20)
    assert q.startswith("llama-quantize Q4_K_M: 20s elapsed, 25% done, about 1m00s left; last output: [  10/ 40]")
    c = tool_line("cmake --build", "[ 80%] Building CXX object\r", 80)
    assert "80% done, about 20s left" in c
    assert tool_line("converter", "", 5) == "converter: 5s elapsed; last output: no output yet"


def test_a_child_program_is_reported_while_it_runs_and_its_whole_output_kept(caplog):
    caplog.set_level(logging.INFO, logger="loraforge.progress")
    script = "import sys, time\nfor i in range(1, 5):\n    print(f'[{i}/4] step', flush=True); time.sleep(0.3)\n"
    script += "print('done', file=sys.stderr)\nsys.exit(3)\n"
    rc, out = run_logged([sys.executable, "-c", script], "stepper", every=0.25)
    assert rc == 3
    assert out.splitlines() == ["[1/4] step", "[2/4] step", "[3/4] step", "[4/4] step", "done"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) >= 3 and all(ln.startswith("stepper: ") for ln in lines)
    assert any("% done, about" in ln and "last output: [" in ln for ln in lines)
