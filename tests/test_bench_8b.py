"""bench.llama8b: the 8B benchmark's model, workflow and measurements (the chain and the bare tools beside it), on
a smaller config of the same shape (Llama 3.1's tokenizer and template, GQA, llama3 rope
scaling) with a budget that makes every torch step stream."""

from __future__ import annotations

import json

import pytest

from bench.llama8b import BARE, CONFIG, run_benchmark, summary
from loraforge.evaluation import load_reference

# 136M parameters, 131M of them Llama 3.1's embedding and output layer (128256 x 512 each)
SMALL = dict(
    CONFIG, hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
# MB: below the small model with two windows' activations in float32 (0.95 GB) and in bf16 (0.68 GB), above its
# largest unit in float32 with one window (the output layer, 0.26 GB, and 0.2 GB): every torch step streams
BUDGET = 560


@pytest.mark.slow
def test_benchmark_runs_the_default_workflow_streamed_and_records_every_job(tmp_path):
    work = tmp_path / "work"
    # the chain only: its LoRA-only half is the workflow tests/test_workflow.py runs on a LoRA-only revision (its
    # own measurement comes from `make bench-8b`), and would add 3.5 minutes here
    res = run_benchmark(
        tmp_path / "cache", work, tmp_path / "out.json", 2, SMALL, BUDGET, parts=("chain",), shard_bytes=int(150e6)
    )
    assert res["workflow_rc"] == 0
    assert json.loads((tmp_path / "out.json").read_text())["jobs"] == res["jobs"]
    base = next(d for d in (tmp_path / "cache").iterdir() if (d / "config.json").exists())
    assert len(list(base.glob("*.safetensors"))) >= 2  # sharded
    tok = json.loads((base / "tokenizer.json").read_text())
    assert {t["id"]: t["content"] for t in tok["added_tokens"]}[128008] == "<|eom_id|>"  # Llama 3.1's, not 3's
    rules = {j["rule"] for j in res["jobs"]}
    assert {"merge_adapter", "convert_to_gguf", "quantize_gguf", "evaluate_adapter"} <= rules  # merge: the reference
    assert all(j["wall_s"] > 0 and j["peak_rss_mb"] > 0 for j in res["jobs"])
    r = work / "chain" / "results"
    merge = json.loads((r / "checks" / "merge" / "support.json").read_text())["check"]
    # the merge check read PEFT's side from the adapter's reference and streamed only the merged model
    assert list(merge["memory_plan"]) == ["merged"] and merge["memory_plan"]["merged"]["streamed"]
    conv = json.loads((r / "gguf" / "support" / "support-BF16.gguf.json").read_text())
    assert conv["tokenizer"]["special_ids"]["eos"] == 128009
    # the conversion's logit check reads the merge check's float32 log-probs of the merged model
    assert conv["check"]["reference_file"] == "results/checks/merge/support.logprobs.safetensors"
    assert load_reference(r / "eval" / "support" / "reference.safetensors")[0]["memory_plan"]["streamed"]
    assert json.loads((r / "eval" / "support" / "merged.json").read_text())["memory_plan"]["streamed"]
    torch_jobs = [j for j in res["jobs"] if j["rule"] in ("merge_adapter", "compute_reference", "evaluate_base")]
    print({f"{j['rule']} {j['job']}": j["peak_anon_mb"] for j in res["jobs"]})
    assert max(j["peak_anon_mb"] for j in torch_jobs) < BUDGET + 1000  # the budget, plus the Python runtime
    # the bare tools beside their jobs
    assert set(res["bare"]) == set(BARE)
    for name, b in res["bare"].items():  # a job runs its tool and checks: never much faster than the bare tool
        assert b["wall_s"] > 0 and 0.8 < b["ratio"] < 20, (name, b)
    assert "lora_only" not in res and "| the whole chain (every job) |" in summary(res)
