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


def test_every_job_logs_its_wall_time_and_peak_memory(tmp_path):
    """The numbers `make bench-8b` reads: a job holding 300 MB shows it; a child's 600 MB count, beside it."""
    import json

    code = (
        "import subprocess, sys, numpy as np\n"
        "from loraforge.rule import run\n"
        "def job():\n"
        "    a = np.ones(300 * 2**20 // 8)\n"
        "    child = 'import numpy as np, time; b = np.ones(600 * 2**17); time.sleep(1.5)'\n"
        "    subprocess.run([sys.executable, '-c', child])\n"
        "    return a.sum()\n"
        "run(sys.argv[1], job)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "job.log")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in (tmp_path / "job.log").read_text().splitlines() if "job resources:" in x)
    res = json.loads(line.split("job resources: ", 1)[1])
    assert res["wall_s"] >= 1 and 300 <= res["vm_hwm_mb"] < 1000 and res["peak_rss_mb"] >= res["vm_hwm_mb"]
    assert res["max_child_rss_mb"] >= 600 and res["peak_anon_mb"] >= 850  # both at once, sampled


def test_the_jobs_threads_reach_a_function_that_forwards_its_keywords(tmp_path):
    """evaluate_artifact and imatrix_artifact pass **kwargs on to the functions that start llama.cpp: the job's
    threads must reach them (dropped, every llama.cpp evaluation ran on one thread of the job's cores)."""
    code = (
        "import sys\n"
        "from loraforge.rule import run\n"
        "def scorer(threads=1):\n"
        "    return threads\n"
        "def rule_function(label, **kwargs):\n"
        "    return scorer(**kwargs)\n"
        "def no_threads(label):\n"
        "    return label\n"
        "a = run(sys.argv[1], rule_function, threads=2, label='x')\n"
        "print(a, run(sys.argv[1], no_threads, threads=2, label='y'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "job.log")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2", "y"]
    assert '"threads": 2' in (tmp_path / "job.log").read_text()
