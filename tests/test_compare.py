"""loraforge.registry.compare: the paired bootstrap, and two GGUFs scored on the same tokens."""

from __future__ import annotations

import numpy as np
import pytest

from loraforge.registry.compare import paired_bootstrap, score_pair


def test_bootstrap_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    tokens = np.full(40, 100.0)
    a = rng.normal(300, 20, 40)
    better = a - 5 + rng.normal(0, 2, 40)  # 0.05 nats/token better in every window, with noise
    r = paired_bootstrap(a, better, tokens)
    assert r["delta_nll"] == pytest.approx(((better - a).sum()) / tokens.sum())
    assert r["ci95"][1] < 0 and r["p_value"] < 0.01
    same = a + rng.normal(0, 2, 40)
    r0 = paired_bootstrap(a, same, tokens)
    assert r0["ci95"][0] < 0 < r0["ci95"][1] and r0["p_value"] > 0.05


def test_a_gguf_against_itself_and_against_its_quantization(f16_gguf, tmp_path, models):
    from loraforge import quantize

    q4 = tmp_path / "q4.gguf"
    quantize(f16_gguf, q4, "Q4_K_M")
    texts = {"general": str(models["text"])}
    same = score_pair(f16_gguf, f16_gguf, texts, n_ctx=64, max_tokens=512)["general"]
    assert same["delta_nll"] == 0 and same["mean_kld_b_from_a"] < 1e-9 and same["top1_agreement"] == 1.0
    assert same["windows"] == 512 // 63 and same["tokens"] == same["windows"] * 63
    q = score_pair(f16_gguf, q4, texts, n_ctx=64, max_tokens=512)["general"]
    assert q["mean_kld_b_from_a"] > 1e-4 and q["ci95"][0] <= q["delta_nll"] <= q["ci95"][1]
