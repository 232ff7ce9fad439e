"""loraforge.compression: depth and width pruning by measured importance, and distillation that heals it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_llama

from loraforge.compression import check_spec, layers_to_drop, mlp_width
from loraforge.compression.distill import distill
from loraforge.compression.prune import prune
from loraforge.errors import PipelineError
from loraforge.evaluation.metrics import log_softmax
from loraforge.evaluation.windows import token_windows
from loraforge.models.hf import load_hf_model
from loraforge.quantization import row_multiple


def logits(model_dir, windows):
    m = load_hf_model(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(torch.from_numpy(windows.astype(np.int64))).logits.numpy()


def kld(p_logits, q_logits):
    lp, lq = log_softmax(p_logits.astype(np.float64)), log_softmax(q_logits.astype(np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory):
    return make_llama(tmp_path_factory.mktemp("four") / "m", layers=4, seed=3)


def test_removing_an_identity_layer_changes_nothing(four_layers, models, tmp_path):
    """Layer 2 with zero output projections adds nothing to the residual stream: it ranks least important, and the
    model without it gives the same logits."""
    m = load_hf_model(four_layers, dtype=torch.float32)
    with torch.no_grad():
        m.model.layers[2].self_attn.o_proj.weight.zero_()
        m.model.layers[2].mlp.down_proj.weight.zero_()
    src = tmp_path / "identity"
    m.save_pretrained(str(src))
    for f in four_layers.iterdir():
        if f.name.startswith("tokenizer") or f.suffix == ".jinja":
            (src / f.name).write_bytes(f.read_bytes())
    s = prune(src, models["text"], tmp_path / "pruned", tmp_path / "scores.json", {"drop_layers": 1}, n_ctx=64)
    assert s["dropped"] == [2] and s["importance"][2] < 1e-3  # arccos of a float32 cosine of 1: not exactly 0
    assert min(s["importance"][:2] + s["importance"][3:]) > 0.01
    cfg = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3
    w = token_windows(src, models["text"], 64, 256)
    np.testing.assert_allclose(logits(tmp_path / "pruned", w), logits(src, w), atol=1e-5)


def _copy_tokenizer(src, dst):
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.suffix == ".jinja":
            (dst / f.name).write_bytes(f.read_bytes())


def _tiny_phi3(path, like):
    """A two-layer Phi-3 (its MLP fuses gate and up into gate_up_proj) with the tiny Llama's tokenizer."""
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(5)
    cfg = Phi3Config(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    Phi3ForCausalLM(cfg).save_pretrained(str(path))
    _copy_tokenizer(like, path)
    return path


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_removing_channels_that_add_nothing_changes_nothing(arch, four_layers, models, tmp_path):
    """In every layer, 64 channels of the MLP (a different set per layer) have zero gate weights, so they add nothing
    to the residual stream: they score zero, narrowing the MLP from 256 to 192 removes exactly them, and the model
    gives the same logits. Phi-3 fuses gate and up projections in one matrix, gate rows first."""
    src = tmp_path / "src"
    if arch == "llama":
        m = load_hf_model(four_layers, dtype=torch.float32)
    else:
        m = load_hf_model(_tiny_phi3(tmp_path / "phi3", four_layers), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    dead = []
    with torch.no_grad():
        for layer in m.model.layers:
            idx = torch.randperm(256, generator=g)[:64]
            gate = layer.mlp.gate_proj.weight if arch == "llama" else layer.mlp.gate_up_proj.weight
            gate[idx] = 0  # the gate rows; in gate_up_proj rows 0..255 are the gate's
            dead.append(set(idx.tolist()))
    m.save_pretrained(str(src))
    _copy_tokenizer(four_layers, src)
    s = prune(src, models["text"], tmp_path / "pruned", tmp_path / "s.json", {"mlp_width": 192}, n_ctx=64)
    assert s["mlp_width"] == [256, 192] and s["dropped"] == [] and s["channel_importance_kept"] == [1.0] * len(dead)
    cfg = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert cfg["intermediate_size"] == 192 and cfg["num_hidden_layers"] == len(dead)
    narrowed = load_hf_model(tmp_path / "pruned", dtype=torch.float32)
    for layer, source, gone in zip(narrowed.model.layers, m.model.layers, dead, strict=True):
        # the kept channels are the live ones, in order: their down-projection columns are the source's
        live = [i for i in range(256) if i not in gone]
        torch.testing.assert_close(layer.mlp.down_proj.weight, source.mlp.down_proj.weight[:, live], rtol=0, atol=0)
    w = token_windows(src, models["text"], 64, 256)
    np.testing.assert_allclose(logits(tmp_path / "pruned", w), logits(src, w), atol=1e-5)


def test_depth_and_width_together_give_a_model_llama_cpp_quantizes_without_fallback(models, tmp_path):
    """A model without one layer and with narrower MLPs is a model llama.cpp's converter reads like any other (its
    float GGUF gives the HF model's logits). A width rounded to Q4_K_M's 256-value blocks quantizes with no fallback
    tensor; a width of 320, which Q8_0's 32-value blocks allow, leaves each layer's down projection (rows 320 long)
    to a fallback type: why the workflow refuses it when a K-quant is configured."""
    from loraforge.conversion import convert_artifact
    from loraforge.quantization import quantize_artifact

    wide = make_llama(tmp_path / "wide", layers=4, inter=512, seed=3)

    def build(name, spec, multiple):
        out = tmp_path / name
        s = prune(wide, models["text"], out, tmp_path / f"{name}.json", spec, n_ctx=64, row_multiple=multiple)
        conv = convert_artifact(out, tmp_path / f"{name}-F16.gguf", tmp_path / f"{name}-F16.gguf.json")
        assert conv["check"]["top1_agreement"] >= 0.98
        q = quantize_artifact(
            tmp_path / f"{name}-F16.gguf", tmp_path / f"{name}-Q4_K_M.gguf", tmp_path / "q.json", "Q4_K_M"
        )
        return s, q

    s, q = build("both", {"drop_layers": 1, "mlp_width": 0.6}, row_multiple("Q4_K_M"))
    assert s["layers"] == [4, 3] and s["mlp_width"] == [512, 256]  # 307.2 channels -> the nearest multiple of 256
    assert len(s["channel_importance_kept"]) == 3 and all(0.5 < v < 1 for v in s["channel_importance_kept"])
    assert q["fallback_tensors"] == 0
    s, q = build("w320", {"mlp_width": 320}, row_multiple("Q8_0"))
    assert s["mlp_width"] == [512, 320] and q["fallback_tensors"] == 4


def test_distillation_brings_the_pruned_model_closer_to_the_teacher(four_layers, models, tmp_path):
    text = models["text"].read_text()
    cal, held = tmp_path / "cal.txt", tmp_path / "held.txt"
    cal.write_text(text[: len(text) // 2])
    held.write_text(text[len(text) // 2 :])
    prune(four_layers, cal, tmp_path / "pruned", tmp_path / "p.json", {"drop_layers": 1}, n_ctx=64)
    curve = tmp_path / "curve.json"
    s = distill(
        four_layers, tmp_path / "pruned", cal, tmp_path / "distilled", curve, steps=40, lr=3e-4, batch=4, n_ctx=64
    )
    assert s["loss_last_10"] < 0.8 * s["loss_first"] and curve.with_suffix(".svg").exists()  # 0.229 -> 0.153
    w = token_windows(four_layers, held, 64, 512)  # held-out text
    teacher = logits(four_layers, w)
    before, after = kld(teacher, logits(tmp_path / "pruned", w)), kld(teacher, logits(tmp_path / "distilled", w))
    assert after < 0.9 * before, (before, after)  # measured 0.248 -> 0.196
    # seeded: the same run gives the same student
    again = distill(
        four_layers,
        tmp_path / "pruned",
        cal,
        tmp_path / "again",
        tmp_path / "c2.json",
        steps=40,
        lr=3e-4,
        batch=4,
        n_ctx=64,
    )
    assert again["loss"] == s["loss"]


@pytest.mark.parametrize(
    "spec,n,msg",
    [
        ({"drop_layers": 4}, 4, "removes all 4 layers"),
        ({"drop_layers": 0.01}, 4, "removes no layer"),
        ({"drop_layers": 1.5}, 4, "a fraction must lie in"),
        ({}, 4, "without drop_layers"),
    ],
)
def test_bad_specs_are_one_line(spec, n, msg):
    with pytest.raises(PipelineError, match=msg):
        layers_to_drop(spec, n)
    assert layers_to_drop({"drop_layers": 0.25}, 32) == 8 and layers_to_drop({"drop_layers": 3}, 32) == 3
    assert layers_to_drop({"mlp_width": 0.5}, 32) == 0


LLAMA_8B = {"num_hidden_layers": 32, "intermediate_size": 14336}


@pytest.mark.parametrize(
    "spec,multiple,msg",
    [
        ({"mlp_width": 1.5}, 256, "mlp_width 1.5: a fraction must lie in"),
        ({"mlp_width": 10000}, 256, "mlp_width 10000 is not a multiple of 256, .* use 9984 or 10240"),
        ({"mlp_width": 14336}, 1, "keeps all 14336 channels"),
        ({"mlp_width": 0.9999}, 256, "keeps all 14336 channels"),
        ({}, 1, "without drop_layers or mlp_width"),
    ],
)
def test_bad_width_specs_are_one_line(spec, multiple, msg):
    with pytest.raises(PipelineError, match=msg):
        check_spec(spec, LLAMA_8B, multiple)


def test_widths_fit_the_gguf_types():
    assert [row_multiple(t) for t in ("F16", "BF16", "Q8_0", "Q4_0", "Q4_K_M", "Q6_K", "IQ4_XS", "IQ4_NL")] == [
        1,
        1,
        32,
        32,
        256,
        256,
        256,
        32,
    ]
    assert row_multiple("Q4_K_M-imat") == 256
    assert check_spec({"drop_layers": 0.25, "mlp_width": 0.75}, LLAMA_8B, 256) == {"drop": 8, "width": 10752}
    assert mlp_width({"mlp_width": 0.7}, 14336, 256) == 9984  # 10035.2 channels: 39.2 blocks of 256 -> 39
    assert mlp_width({"mlp_width": 0.01}, 14336, 256) == 256  # at least one block
    with pytest.raises(PipelineError, match="no single intermediate_size"):
        check_spec({"mlp_width": 0.5}, {"num_hidden_layers": 12, "n_inner": None}, 1)  # GPT-2's config
