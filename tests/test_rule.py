"""loraforge.rule: a rule script's failure is one line in its log and on stderr, exit 1."""

from __future__ import annotations

import subprocess
import sys


def test_pipeline_error_is_one_line_and_exit_1(tmp_path):
    code = (
        "import sys\n"
        "from loraforge.errors import PipelineError\n"
        "from loraforge.rule import run\n"
        "def job(x):\n"
        "    raise PipelineError(f'{x}: the problem')\n"
        "run(sys.argv[1], job, x='model.gguf')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "job.log")], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("model.gguf: the problem")
    assert (tmp_path / "job.log").read_text().strip().endswith("model.gguf: the problem")


def test_a_bug_keeps_its_traceback_in_the_log(tmp_path):
    code = "import sys\nfrom loraforge.rule import run\nrun(sys.argv[1], lambda: 1 / 0)\n"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "job.log")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "ZeroDivisionError" in (tmp_path / "job.log").read_text()
