"""loraforge.conversion.lora: PEFT adapters as LoRA GGUFs that llama.cpp applies exactly as PEFT does.

llama.cpp applies every LoRA pair with lora_alpha / rank; rsLoRA and rank/alpha patterns scale differently, and
llama.cpp's converter ignores them (shown here: the untransformed GGUF disagrees with PEFT and with the merged
model). Folding PEFT's scale into B makes base + LoRA GGUF the adapter's model again. The check compares with the
adapter applied through PEFT (float32, unmerged), so it needs no merged model: a corrupted LoRA GGUF fails it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import make_adapter

from loraforge import compute_reference, convert, merge
from loraforge.conversion.lora import check_lora, convert_lora, lora_artifact, refusal
from loraforge.errors import PipelineError
from loraforge.llamacpp.library import GGUFModel
from loraforge.llamacpp.toolchain import locate
from loraforge.llamacpp.tools import converter_env


@pytest.fixture(scope="module")
def base_gguf(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "base-F16.gguf"
    convert(models["base"], out, outtype="f16")
    return out


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("plain", {}),
        ("rslora", {"use_rslora": True}),
        ("patterns", {"rank_pattern": {"q_proj": 4}, "alpha_pattern": {"v_proj": 3}}),
    ],
)
def test_base_plus_lora_gguf_is_the_merged_model(models, base_gguf, tmp_path, name, kwargs):
    base = models["base"]
    ad = make_adapter(base, tmp_path / name, r=8, std=0.02, **kwargs)
    merge(base, [ad], tmp_path / "merged")
    convert(tmp_path / "merged", tmp_path / "merged.gguf", outtype="f16")
    s = lora_artifact(ad, base, tmp_path / "lora.gguf", tmp_path / "lora.json", base_gguf)
    assert s["check"]["mean_kld"] < 1e-4 and s["check"]["max_abs_logit_diff"] < 0.1, s
    assert s["check"]["reference"] == "the adapter applied through PEFT, unmerged, float32"
    assert s["inputs"]["adapters"][0]["sha256"] and s["inputs"]["base_model"]["sha256"]  # the revision's lineage
    # and it is the merged model: llama.cpp's own logits of the merged GGUF agree
    ids = list(range(1, 60))
    with GGUFModel(tmp_path / "merged.gguf", n_ctx=64) as m:
        want = m.logits(ids)
    with GGUFModel(base_gguf, n_ctx=64, lora=tmp_path / "lora.gguf") as m:
        got = m.logits(ids)
    assert abs(got - want).max() < 0.1
    assert s["transformed"] == (name != "plain")
    assert (tmp_path / "lora.gguf").stat().st_size < 0.2 * (tmp_path / "merged.gguf").stat().st_size
    if name != "plain":  # what llama.cpp's converter alone makes of this adapter
        raw = tmp_path / "raw.gguf"
        script = locate().script("convert_lora_to_gguf.py")
        cmd = [sys.executable, str(script), "--base", str(base), "--outfile", str(raw), "--outtype", "f16", str(ad)]
        subprocess.run(cmd, env=converter_env(), check=True, capture_output=True)
        wrong = check_lora(base, ad, base_gguf, raw)
        assert wrong["max_abs_logit_diff"] > 5 * s["check"]["max_abs_logit_diff"], (wrong, s["check"])
        assert wrong["mean_kld"] > 100 * s["check"]["mean_kld"], (wrong, s["check"])


def test_stack_weight_is_folded_into_the_lora(models, base_gguf, tmp_path):
    base = models["base"]
    merge(base, [{"path": models["alpha"], "weight": 0.5}], tmp_path / "merged")
    convert(tmp_path / "merged", tmp_path / "merged.gguf", outtype="f16")
    s = lora_artifact(models["alpha"], base, tmp_path / "l.gguf", tmp_path / "l.json", base_gguf, weight=0.5)
    assert s["transformed"] and s["why"] == ["weight"] and s["check"]["mean_kld"] < 1e-4
    with GGUFModel(tmp_path / "merged.gguf", n_ctx=64) as m, GGUFModel(base_gguf, 64, lora=tmp_path / "l.gguf") as b:
        assert abs(b.logits(list(range(1, 60))) - m.logits(list(range(1, 60)))).max() < 0.1


def test_a_corrupted_lora_gguf_fails_its_check(models, base_gguf, tmp_path):
    base, ad = models["base"], models["alpha"]
    s = lora_artifact(ad, base, tmp_path / "l.gguf", tmp_path / "l.json", base_gguf)
    bad = tmp_path / "bad.gguf"
    data = bytearray((tmp_path / "l.gguf").read_bytes())
    data[-(1 << 16) :] = b"\x00\x3c" * (1 << 15)  # the last tensors' values all 1.0 (f16): a valid file, wrong numbers
    bad.write_bytes(bytes(data))
    res = check_lora(base, ad, base_gguf, bad)
    assert not res["mean_kld"] <= 5e-3 and res["mean_kld"] > 1000 * s["check"]["mean_kld"], (res, s["check"])


def test_a_lora_only_check_uses_the_peft_reference_and_fails_a_corrupted_lora(models, base_gguf, tmp_path):
    """A LoRA-only revision checks against its evaluation reference (PEFT, float32) instead of running PEFT again:
    the same verdicts as the check that runs PEFT, a corrupted LoRA GGUF fails it, a reference of another adapter
    is refused."""
    base, ad = models["base"], models["alpha"]
    ref = tmp_path / "ref.safetensors"
    compute_reference(base, {"t": models["text"]}, ref, n_ctx=64, max_tokens=256, adapters=[{"path": ad, "weight": 1}])
    s = lora_artifact(ad, base, tmp_path / "l.gguf", tmp_path / "l.json", base_gguf, reference=ref)
    own = check_lora(base, ad, base_gguf, tmp_path / "l.gguf")  # the check that runs PEFT itself
    assert s["check"]["reference_file"] == str(ref) and s["check"]["tokens"] == 64
    assert 0 < s["check"]["mean_kld"] < 1e-4 and 0 < own["mean_kld"] < 1e-4, (s["check"], own)
    assert s["check"]["top1_agreement"] == 1.0 and s["check"]["max_abs_logprob_diff"] < 0.05, s["check"]
    bad = tmp_path / "bad.gguf"
    data = bytearray((tmp_path / "l.gguf").read_bytes())
    data[-(1 << 16) :] = b"\x00\x3c" * (1 << 15)  # the last tensors' values all 1.0 (f16)
    bad.write_bytes(bytes(data))
    res = check_lora(base, ad, base_gguf, bad, reference=ref)
    assert res["mean_kld"] > 1000 * s["check"]["mean_kld"], (res, s["check"])
    with pytest.raises(PipelineError, match="failed its check|disagrees"):
        lora_artifact(ad, base, tmp_path / "b.gguf", tmp_path / "b.json", base_gguf, reference=ref, max_kld=1e-9)
    assert not (tmp_path / "b.gguf").exists() and not (tmp_path / "b.json").exists()
    with pytest.raises(PipelineError, match="not the PEFT reference of .*beta"):
        check_lora(base, models["beta"], base_gguf, tmp_path / "l.gguf", reference=ref)


def test_what_no_lora_gguf_expresses_is_refused_in_one_line(models, tmp_path):
    base = models["base"]
    dora = make_adapter(base, tmp_path / "dora", r=4, use_dora=True)
    assert "DoRA" in refusal([dora])
    with pytest.raises(PipelineError, match="no LoRA GGUF: DoRA"):
        convert_lora(dora, base, tmp_path / "x.gguf")
    assert "stack" in refusal([models["alpha"], models["beta"]])
    saved = make_adapter(base, tmp_path / "mts", r=4, modules_to_save=["lm_head"])
    assert "wholesale" in refusal([saved])
    assert not (tmp_path / "x.gguf").exists()
    gpt2 = shutil.copytree(models["alpha"], tmp_path / "gpt2-style")  # GPT-2's Conv1D adapters: llama.cpp crashes
    cfg = json.loads((gpt2 / "adapter_config.json").read_text())
    (gpt2 / "adapter_config.json").write_text(json.dumps({**cfg, "fan_in_fan_out": True}))
    assert "fan_in_fan_out" in refusal([gpt2]) and "SIGSEGV" in refusal([gpt2])
