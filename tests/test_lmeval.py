"""lm-evaluation-harness, run by loraforge against a GGUF as llama-server serves it: a user's own generate_until
task on local data gives its number; a task that needs prompt log-probs is refused in one line."""

from __future__ import annotations

import pytest
from conftest import REPO

from loraforge.errors import PipelineError

pytestmark = pytest.mark.slow  # lm-eval's import and a served GGUF: about half a minute

TASKS = REPO / "tests" / "data" / "lmeval"


def test_a_generate_until_task_runs_against_the_served_gguf(smollm2, tmp_path, monkeypatch):
    from loraforge.evaluation import evaluate_artifact

    monkeypatch.chdir(REPO)  # the task's data_files are relative, as a user's are to where the workflow runs
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "Q4_1.json"
    m = evaluate_artifact(
        out,
        label="demo/Q4_1",
        kind="gguf",
        path=smollm2["gguf"],
        base_dir=smollm2["base"],
        texts={"general": str(text)},
        n_ctx=64,
        max_tokens=64,
        lm_eval={"include_path": str(TASKS), "tasks": ["capitals"], "limit": None},
    )
    task = m.lm_eval["tasks"]["capitals"]
    assert task["n_samples"] == 4
    score = task["values"]["exact_match,first-capital"]
    # SmolLM2-135M-Instruct knows some capitals: a number lm-eval measured, neither chance nor a constant
    assert 0.5 <= score <= 1.0, task
    assert m.lm_eval["server"].startswith("llama-server") and m.lm_eval["output_types"] == {
        "capitals": "generate_until"
    }
    assert out.is_file()


def test_a_loglikelihood_task_against_llama_server_is_refused_in_one_line():
    from loraforge.lmeval import run_tasks

    with pytest.raises(PipelineError) as e:
        run_tasks("http://127.0.0.1:9", "llama-server", TASKS, ["capitals", "capitals_choice"], check_only=True)
    msg = str(e.value)
    assert "capitals_choice is a multiple_choice task" in msg and "llama.cpp#27174" in msg and "\n" not in msg


def test_an_unknown_task_is_refused_naming_the_directory():
    from loraforge.lmeval import run_tasks

    with pytest.raises(PipelineError, match=r"task 'nope' is not in .*lmeval \(capitals, capitals_choice\)"):
        run_tasks("http://127.0.0.1:9", "llama-server", TASKS, ["nope"], check_only=True)
