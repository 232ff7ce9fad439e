"""loraforge.compression: depth pruning by measured layer importance, and distillation that heals it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_llama

from loraforge.compression import layers_to_drop
from loraforge.compression.distill import distill
from loraforge.compression.prune import prune
from loraforge.errors import PipelineError
from loraforge.evaluation.metrics import log_softmax
from loraforge.evaluation.windows import token_windows
from loraforge.merging.peft_reference import load_hf_model


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
