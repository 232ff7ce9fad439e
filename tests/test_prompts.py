"""The generation checks' prompts file: what it accepts, each problem refused in one line naming file:line, the
scorers, the bootstrap interval and the per-artifact numbers."""

from __future__ import annotations

import json

import pytest

from loraforge.errors import PipelineError
from loraforge.evaluation.generation import Answer, answer_metrics
from loraforge.evaluation.prompts import bootstrap_ci, is_correct, load_prompts

USER = [{"role": "user", "content": "2 + 3?"}]


def _write(tmp_path, *lines) -> object:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def test_a_prompts_file_loads_with_defaults(tmp_path):
    path = _write(
        tmp_path,
        {"id": "sum", "messages": USER, "expected": "5"},
        "",
        {"messages": [{"role": "system", "content": "Be brief."}, *USER], "expected": r"\b5\b", "scorer": "regex"},
        {"messages": USER},
    )
    a, b, c = load_prompts(path)
    assert (a.id, a.scorer) == ("sum", "exact")  # an expected answer without a scorer is compared exactly
    assert (b.id, b.scorer) == ("line-3", "regex")  # ids default to the line number (blank lines skipped)
    assert c.scorer is None and is_correct(c, "anything") is None
    assert is_correct(a, " 5\n") and not is_correct(a, "5.")
    assert is_correct(b, "it is 5.") and not is_correct(b, "it is 15")


@pytest.mark.parametrize(
    "line, problem",
    [
        ("{not json", "not JSON"),
        ('["a list"]', "a line is a JSON object"),
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": [{"content": "hi"}]}, "message 0 has no role"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "message 0 has role 'bot'"),
        ({"messages": [{"role": "user"}]}, "message 0 has no text content"),
        ({"messages": [*USER, {"role": "assistant", "content": "5"}]}, "the last message is the assistant's"),
        ({"messages": USER, "expect": "5"}, "unknown key 'expect'"),
        ({"messages": USER, "scorer": "contains"}, "scorer contains needs an expected answer"),
        ({"messages": USER, "expected": "(5", "scorer": "regex"}, "not a valid regular expression"),
        ({"messages": USER, "expected": "5", "scorer": "fuzzy"}, "is none of exact, contains, regex"),
        ({"messages": USER, "scorer": "no_such_module_xyz:check"}, "cannot import no_such_module_xyz"),
        ({"messages": USER, "scorer": "json:no_such_function"}, "json has no function no_such_function"),
    ],
)
def test_each_problem_is_refused_in_one_line_naming_file_and_line(tmp_path, line, problem):
    path = _write(tmp_path, {"messages": USER}, line)
    with pytest.raises(PipelineError) as e:
        load_prompts(path)
    assert str(e.value).startswith(f"{path}:2: ") and problem in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_duplicate_ids_and_empty_files_are_refused(tmp_path):
    with pytest.raises(PipelineError, match=r":2: id 'a' is also line 1's"):
        load_prompts(_write(tmp_path, {"id": "a", "messages": USER}, {"id": "a", "messages": USER}))
    with pytest.raises(PipelineError, match="no prompts"):
        load_prompts(_write(tmp_path, ""))
    with pytest.raises(PipelineError, match="no such prompts file"):
        load_prompts(tmp_path / "missing.jsonl")


def test_a_users_scorer_is_imported_from_beside_the_prompts_file(tmp_path):
    (tmp_path / "my_scorers.py").write_text("def sum_ok(answer, expected):\n    return expected in answer.split()\n")
    (p,) = load_prompts(_write(tmp_path, {"messages": USER, "expected": "5", "scorer": "my_scorers:sum_ok"}))
    assert is_correct(p, "2 + 3 = 5", tmp_path) and not is_correct(p, "2 + 3 = 15", tmp_path)


def test_bootstrap_interval_of_an_accuracy():
    assert bootstrap_ci([1, 1, 1, 1]) == (1.0, 1.0)
    lo, hi = bootstrap_ci([1, 0] * 10)
    assert 0.2 <= lo < 0.5 < hi <= 0.8  # about 0.5 ± 1.96 * sqrt(0.25 / 20)
    assert bootstrap_ci([1, 0] * 10) == (lo, hi)  # seeded: the same prompts give the same interval


def test_answer_metrics_per_artifact(tmp_path):
    prompts = load_prompts(
        _write(
            tmp_path,
            {"id": "a", "messages": USER, "expected": "5", "scorer": "contains"},
            {"id": "b", "messages": USER, "expected": "5", "scorer": "contains"},
            {"id": "c", "messages": USER},
        )
    )
    ref = [
        Answer("a", "It is 5.", "stop", 4, 1.0),
        Answer("b", "Five", "stop", 2, 1.0),
        Answer("c", "x", "stop", 1, 1.0),
    ]
    got = [
        Answer("a", "It is 5.", "stop", 4, 0.5),
        Answer("b", "Fiv", "length", 8, 1.5),
        Answer("c", "y", "stop", 1, 0.5),
    ]
    m = answer_metrics(prompts, got, ref, list)  # tokens: characters
    assert m["stop_rate"] == pytest.approx(2 / 3)
    assert m["identical_to_reference"] == pytest.approx(1 / 3)
    assert m["mean_common_prefix_tokens"] == pytest.approx((8 + 3 + 0) / 3)
    assert (m["scored_prompts"], m["accuracy"]) == (2, 0.5)
    assert m["tokens_per_second"] == pytest.approx(13 / 2.5)
    assert [r.get("correct") for r in m["answers"]] == [True, False, None]


def _answered(outcomes: list[tuple[bool, str]], sha: str = "p1") -> dict:
    rows = [{"id": f"q{i}", "correct": ok, "finish": finish} for i, (ok, finish) in enumerate(outcomes)]
    return {"generation": {"prompts_sha256": sha, "answers": rows}}


def test_promotion_on_answers_pairs_the_prompts_and_refuses_a_candidate_worse_with_confidence():
    from loraforge.registry.promote import judge_answers

    current = _answered([(True, "stop")] * 20)
    same = _answered([(True, "stop")] * 19 + [(False, "stop")])  # one answer lost: within the noise of 20 prompts
    worse = _answered([(True, "stop")] * 10 + [(False, "length")] * 10)
    need = {"accuracy": "not_worse", "stop_rate": "not_worse"}
    ok, why, numbers = judge_answers(need, current, same, "Q4_K_M")
    assert ok and numbers["accuracy"]["delta"] == pytest.approx(-0.05) and numbers["accuracy"]["prompts"] == 20
    ok, why, numbers = judge_answers(need, current, worse, "Q4_K_M")
    assert not ok and numbers["stop_rate"]["ci95"][1] < 0
    assert why[0].startswith("accuracy -0.500 over 20 prompts") and "lies below 0 (worse)" in why[0]
    with pytest.raises(PipelineError, match="answered different prompts files"):
        judge_answers(need, current, _answered([(True, "stop")] * 20, sha="p2"), "Q4_K_M")
    with pytest.raises(PipelineError, match="the candidate's Q4_K_M has no generation checks"):
        judge_answers(need, current, {}, "Q4_K_M")


def test_every_form_answers_through_its_own_serving_path():
    from loraforge.forms import FORMS, Kind

    assert {f.kind: f.answers_through for f in FORMS} == {
        Kind.PEFT: "transformers",
        Kind.HF: "transformers",
        Kind.GGUF: "llama-server",
        Kind.LORA: "llama-server",
        Kind.CHECKPOINT: "vllm",
        Kind.CHECKPOINT_LORA: "vllm",
    }
