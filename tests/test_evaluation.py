"""loraforge.evaluation: the metrics record, the gates, and scoring a GGUF against a float32 reference."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO

from loraforge import compute_reference, evaluate
from loraforge.errors import PipelineError
from loraforge.evaluation import evaluate_artifact
from loraforge.evaluation.metrics import GATES, Metrics, TextMetrics, check_gates


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "reference.safetensors"
    compute_reference(models["base"], {"general": models["text"]}, out, n_ctx=64, max_tokens=1024)
    return out


def test_schema_offers_exactly_the_gates_the_code_knows():
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    gate = schema["properties"]["evaluation"]["properties"]["gates"]["additionalProperties"]
    assert set(gate["properties"]) == set(GATES)


def test_metrics_record_round_trips_through_json():
    m = Metrics(
        label="a/Q8_0",
        artifact="x.gguf",
        kind="gguf",
        n_ctx=64,
        texts={"t": TextMetrics(scored_tokens=10, ppl=3.0, mean_kld=0.01)},
        scored_tokens=10,
        eval_seconds=1.0,
        load_seconds=0.5,
        mean_kld=0.01,
    )
    back = Metrics.from_json(json.loads(json.dumps(m.to_json())))
    assert back == m and back.ppl() == {"t": 3.0}


def test_gates_name_artifact_metric_threshold_and_value():
    m = Metrics(
        label="x",
        artifact="x",
        kind="gguf",
        n_ctx=8,
        texts={},
        scored_tokens=1,
        eval_seconds=1,
        load_seconds=1,
        mean_kld=0.03,
        top1_agreement=0.95,
    )
    assert check_gates(m, {"max_mean_kld": 0.05, "min_top1": 0.9}, "a/Q4") == []
    assert check_gates(m, {"max_mean_kld": 0.02}, "a/Q4") == [
        "a/Q4: quality gate failed: mean_kld = 0.03, max_mean_kld = 0.02"
    ]
    with pytest.raises(PipelineError, match="gate max_p99_kld needs p99_kld, which was not measured"):
        check_gates(m, {"max_p99_kld": 1}, "a/Q4")


def test_the_reference_scores_itself_exactly(models, reference):
    m = evaluate("hf", models["base"], reference=reference)
    assert m.mean_kld < 1e-9 and m.top1_agreement == 1.0 and abs(m.max_delta_ppl) < 1e-6


def test_a_bfloat16_model_records_the_dtype_it_was_computed_in(models, reference, tmp_path):
    """Its own dtype where the hardware computes it, float32 on a CPU without bfloat16 arithmetic (where torch's
    emulation is ~30x slower); the weights are the bfloat16 ones either way, so the model is not the reference."""
    import torch

    from loraforge.device import compute_dtype
    from loraforge.models.hf import load_hf_model

    bf16 = tmp_path / "bf16"
    load_hf_model(models["base"], dtype=torch.bfloat16).save_pretrained(bf16)
    m = evaluate("hf", bf16, reference=reference)
    assert m.compute_dtype == compute_dtype("bfloat16") and m.compute_dtype in ("bfloat16", "float32")
    assert 0 < m.mean_kld < 1e-2 and m.to_json()["compute_dtype"] == m.compute_dtype
    assert evaluate("hf", models["base"], reference=reference).compute_dtype == "float32"


def test_a_gguf_is_scored_against_the_reference(f16_gguf, reference):
    m = evaluate("gguf", f16_gguf, reference=reference, label="base/F16")
    assert 0 < m.mean_kld < 1e-3 and m.top1_agreement > 0.98 and m.scored_tokens == 16 * 63
    assert m.size_bytes == f16_gguf.stat().st_size and 15.9 < m.bits_per_weight < 16.1


def test_a_failing_gate_writes_nothing(f16_gguf, reference, tmp_path):
    out = tmp_path / "m.json"
    with pytest.raises(PipelineError, match=r"x/F16: quality gate failed: mean_kld = [\d.e-]+, max_mean_kld = 1e-12"):
        evaluate_artifact(out, "x/F16", {"max_mean_kld": 1e-12}, kind="gguf", path=f16_gguf, reference=reference)
    assert not out.exists()


def test_a_gguf_evaluation_counts_in_the_window_its_build_check_scored(f16_gguf, reference):
    """A merged model's GGUF checks score the evaluation reference's first window (window_scores, kept in the GGUF's
    sidecar); its evaluation counts that window in instead of scoring it again, to the same numbers, and only where
    the check scored against this very reference."""
    from loraforge.evaluation.reference import gguf_against_reference

    res, _ = gguf_against_reference(f16_gguf, reference, evaluation_reference=reference)
    window = res["evaluation_window"]
    assert window["text"] == "general" and window["windows"] == 1 and len(window["kld"]) == 63
    full = evaluate("gguf", f16_gguf, reference=reference, label="base/F16")
    counted = evaluate("gguf", f16_gguf, reference=reference, label="base/F16", checked=window)
    assert full.from_check is None and counted.from_check == {"text": "general", "windows": 1}
    assert counted.scored_tokens == full.scored_tokens == 16 * 63
    for key in ("mean_kld", "median_kld", "p99_kld", "top1_agreement", "max_delta_ppl"):
        assert getattr(counted, key) == pytest.approx(getattr(full, key), rel=1e-6, abs=1e-9), key
    assert counted.texts["general"].ppl == pytest.approx(full.texts["general"].ppl, rel=1e-9)
    assert counted.texts["general"].ref_ppl == pytest.approx(full.texts["general"].ref_ppl, rel=1e-9)
    elsewhere = evaluate("gguf", f16_gguf, reference=reference, checked={**window, "reference_sha256": "0" * 64})
    assert elsewhere.from_check is None and elsewhere.mean_kld == pytest.approx(full.mean_kld, rel=1e-6)


def test_an_hf_model_scored_beside_its_conversion_is_not_scored_again(models, reference, tmp_path):
    """The conversion job scores the merged model on the core llama.cpp's converter leaves idle; its evaluation takes
    those numbers, only where they are of its reference, and scores the model itself otherwise."""
    from loraforge.conversion import convert_artifact

    gguf, sidecar = tmp_path / "m-F16.gguf", tmp_path / "m-F16.gguf.json"
    beside = {"label": "m/merged", "batch": 8}
    convert_artifact(
        models["base"], gguf, sidecar, reference=reference, evaluation_reference=reference, score_merged=beside
    )
    recorded = json.loads(sidecar.read_text())["merged_evaluation"]["metrics"]
    fresh = evaluate("hf", models["base"], reference=reference)
    assert recorded["mean_kld"] == pytest.approx(fresh.mean_kld, rel=1e-6, abs=1e-12)
    assert recorded["texts"]["general"]["ppl"] == pytest.approx(fresh.texts["general"].ppl, rel=1e-9)
    taken = evaluate_artifact(
        tmp_path / "merged.json", "m/merged", kind="hf", path=models["base"], reference=reference, scored_json=sidecar
    )
    assert taken.scored_beside == f"convert_to_gguf ({sidecar})" and taken.label == "m/merged"
    assert {k: v for k, v in taken.to_json().items() if k != "scored_beside"} == recorded  # as recorded
    # a sidecar scored against another reference: the evaluation scores the model itself
    other = json.loads(sidecar.read_text())
    other["merged_evaluation"]["reference_sha256"] = "0" * 64
    (elsewhere := tmp_path / "other.json").write_text(json.dumps(other))
    again = evaluate_artifact(
        tmp_path / "m2.json", "m/merged", kind="hf", path=models["base"], reference=reference, scored_json=elsewhere
    )
    assert again.scored_beside is None and again.mean_kld == pytest.approx(fresh.mean_kld, rel=1e-6, abs=1e-12)
    assert "scored_beside" not in json.loads((tmp_path / "m2.json").read_text())
    # a model that answers prompts is scored where it answers them, never from a conversion
    with pytest.raises(PipelineError, match="only an HF model that answers no prompts"):
        evaluate_artifact(
            tmp_path / "m3.json",
            "m/merged",
            kind="hf",
            path=models["base"],
            reference=reference,
            scored_json=sidecar,
            answers=tmp_path / "answers.json",
        )
