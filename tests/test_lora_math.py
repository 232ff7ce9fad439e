"""loraforge.merging.lora_math: PEFT's scaling rules and the delta applied a block of rows at a time."""

from __future__ import annotations

import math

import numpy as np

from loraforge.merging.lora_math import LoraDelta, lora_scaling, pattern_value


def test_scaling_plain_rslora_and_patterns():
    cfg = {"r": 16, "lora_alpha": 32}
    assert lora_scaling(cfg, "model.layers.0.self_attn.q_proj") == 2.0
    assert lora_scaling({**cfg, "use_rslora": True}, "x.q_proj") == 32 / math.sqrt(16)
    pat = {**cfg, "rank_pattern": {"q_proj": 4}, "alpha_pattern": {"layers.1.mlp.down_proj": 8}}
    assert lora_scaling(pat, "model.layers.0.self_attn.q_proj") == 32 / 4
    assert lora_scaling(pat, "model.layers.1.mlp.down_proj") == 8 / 16
    assert lora_scaling(pat, "model.layers.11.mlp.down_proj") == 2.0  # dot boundary: layers.11 is not layers.1
    assert pattern_value({"proj": 1}, "model.q_proj", 0) == 0  # whole-name suffix only


def test_delta_by_row_blocks_equals_the_whole_update():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 8)).astype(np.float32)
    a, b = rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((12, 4)).astype(np.float32)
    d = LoraDelta(a, b, 0.5, transposed=False)
    blocks = np.concatenate([d.apply(w[r : r + 5].copy(), r, min(12, r + 5)) for r in range(0, 12, 5)])
    assert np.allclose(blocks, w + 0.5 * b @ a, atol=1e-5)


def test_dora_rescales_rows_to_the_magnitude():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    a, b = rng.standard_normal((2, 4)).astype(np.float32), rng.standard_normal((6, 2)).astype(np.float32)
    mag = rng.uniform(0.5, 2, 6).astype(np.float32)
    out = LoraDelta(a, b, 1.0, transposed=False, magnitude=mag).apply(w.copy(), 0, 6)
    assert np.allclose(np.linalg.norm(out, axis=1), mag, atol=1e-5)
    direction = w + b @ a
    assert np.allclose(
        out / np.linalg.norm(out, axis=1, keepdims=True),
        direction / np.linalg.norm(direction, axis=1, keepdims=True),
        atol=1e-5,
    )


def test_transposed_weight_gets_the_transposed_delta():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 12)).astype(np.float32)  # stored [in, out]
    a, b = rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal((12, 3)).astype(np.float32)
    out = LoraDelta(a, b, 2.0, transposed=True).apply(w.copy(), 0, 8)
    assert np.allclose(out, w + 2.0 * (b @ a).T, atol=1e-5)
