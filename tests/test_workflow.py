"""The artifact graph run for real through the snakemake CLI on tiny local models: plan, incremental
rebuilds, checks and bad input."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from conftest import make_adapter, user_config
from safetensors.torch import load_file, save_file

from loraforge.hashing import sha256_file, tree_files

pytestmark = pytest.mark.slow


def file_hashes(root):
    return {str(p.relative_to(root)): sha256_file(p) for p in tree_files(root)}


def all_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def built(tmp_path_factory, models):
    """One full build, shared by the incremental-rebuild tests (each works on its own copy of models)."""
    root = tmp_path_factory.mktemp("built")
    m = {k: shutil.copytree(v, root / "models" / k) for k, v in models.items()}
    from conftest import Workflow

    wf = Workflow(root / "wf", user_config(m))
    before = file_hashes(m["base"])
    dry = wf.planned()
    assert not (wf.root / "results").exists() and not (wf.root / "logs").exists()
    wf.run()
    return wf, m, before, dry


def test_dry_run_lists_every_job_and_writes_nothing(built):
    wf, _m, _before, dry = built
    rules = sorted(r for r, _ in dry if r != "all")
    assert rules == sorted(["merge_adapter"] * 2 + ["convert_to_gguf"] * 2 + ["quantize_gguf"] * 2)
    assert {w["adapter"] for r, w in dry if r == "quantize_gguf"} == {"alpha", "beta"}


def test_full_run_outputs_and_sidecars(built):
    wf, _m, _before, _ = built
    res = wf.root / "results"
    for a in ("alpha", "beta"):
        assert (res / "merged" / a / "model.safetensors").exists()
        assert (res / "merged" / a / "tokenizer.model").exists()
        assert (res / "merged" / a / "chat_template.jinja").exists()
        merge = json.loads((res / "merged" / f"{a}.merge.json").read_text())
        assert merge["check"]["max_abs_logit_diff"] <= merge["check"]["tolerance"]
        conv = json.loads((res / "gguf" / a / f"{a}-F16.gguf.json").read_text())
        assert conv["check"]["top1_agreement"] >= 0.98
        assert 15.9 < conv["bits_per_weight"] < 16.1
        q = json.loads((res / "gguf" / a / f"{a}-Q8_0.gguf.json").read_text())
        assert q["check"]["finite_logits"] and 8.0 < q["bits_per_weight"] < 9.0
        assert (res / "gguf" / a / f"{a}-Q8_0.gguf").read_bytes()[:4] == b"GGUF"
    # no temporary leftovers anywhere
    leftovers = [f for f in all_files(res) if f.endswith(".tmp") or "/." in f]
    assert [f for f in leftovers if not f.endswith("/.snakemake_timestamp")] == []


def test_base_model_is_never_written(built):
    _wf, m, before, _ = built
    assert file_hashes(m["base"]) == before


def test_second_run_does_nothing(built):
    wf, *_ = built
    assert wf.planned() == []


def test_touching_an_adapter_reruns_nothing(built):
    wf, m, *_ = built
    weights = m["alpha"] / "adapter_model.safetensors"
    assert weights.stat().st_size > 1_000_000  # above Snakemake's --max-checksum-file-size default
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns + 10**10, st.st_mtime_ns + 10**10))
    os.utime(m["base"] / "model.safetensors", ns=(st.st_atime_ns + 10**10, st.st_mtime_ns + 10**10))
    assert wf.planned() == []


def test_adding_a_quant_type_builds_only_the_new_files(built):
    wf, m, *_ = built
    cfg = user_config(m)
    cfg["quantize"]["types"] = ["Q8_0", "Q4_K_M"]
    wf.write_config(cfg)
    try:
        jobs = [(r, w) for r, w in wf.planned() if r != "all"]
        assert sorted((r, w["adapter"], w["quant"]) for r, w in jobs) == [
            ("quantize_gguf", "alpha", "Q4_K_M"), ("quantize_gguf", "beta", "Q4_K_M")]
    finally:
        wf.write_config(user_config(m))


def test_changing_one_adapter_rebuilds_only_its_chain(built):
    wf, m, *_ = built
    beta_before = file_hashes(wf.root / "results" / "gguf" / "beta")
    weights = m["alpha"] / "adapter_model.safetensors"
    t = load_file(weights)
    key = next(k for k in t if "lora_B" in k)
    t[key] = t[key] + 0.01
    save_file(t, weights, metadata={"format": "pt"})
    jobs = [(r, w["adapter"]) for r, w in wf.planned() if r != "all"]
    assert sorted(jobs) == [("convert_to_gguf", "alpha"), ("merge_adapter", "alpha"), ("quantize_gguf", "alpha")]
    wf.run()
    assert file_hashes(wf.root / "results" / "gguf" / "beta") == beta_before
    assert wf.planned() == []


def test_failed_check_leaves_no_output(workflow, models):
    cfg = user_config(models)
    cfg["adapters"] = {"alpha": str(models["alpha"])}
    cfg["convert"] = {"max_abs_logit_diff": 1e-9}  # impossible for F16: the check must fail the rule
    wf = workflow(cfg)
    proc = wf.run("results/gguf/alpha/alpha-F16.gguf", check=False)
    assert proc.returncode != 0
    log = (wf.root / "logs" / "convert_to_gguf" / "alpha.log").read_text()
    assert "llama.cpp logits disagree with the HF model" in log
    gguf_dir = wf.root / "results" / "gguf" / "alpha"
    assert not gguf_dir.exists() or all_files(gguf_dir) == []
    assert (wf.root / "results" / "merged" / "alpha" / "model.safetensors").exists()  # upstream kept


def test_bf16_base_to_f16_is_logged(workflow, tmp_path):
    from conftest import make_llama

    base = make_llama(tmp_path / "bf16base", dtype=torch.bfloat16)
    ad = make_adapter(base, tmp_path / "ad", r=8)
    wf = workflow({"base_model": str(base), "adapters": {"a": str(ad)}, "quantize": {"types": ["Q8_0"]}})
    wf.run("results/gguf/a/a-F16.gguf")
    log = (wf.root / "logs" / "convert_to_gguf" / "a.log").read_text()
    assert "bfloat16 weights; writing F16 changes their precision" in log
    merge = json.loads((wf.root / "results" / "merged" / "a.merge.json").read_text())
    assert merge["base_dtype"] == "BF16"
    merged = load_file(wf.root / "results" / "merged" / "a" / "model.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in merged.values())
