"""vLLM's scoring without vLLM (loraforge.vllm.scoring): the lumped KL-divergence bound, the cross-check's band, and
a missing environment. vLLM itself runs in tests/test_hfquant.py, on the checkpoints calibrated there."""

from __future__ import annotations

import numpy as np
import pytest

from loraforge.errors import PipelineError
from loraforge.vllm import PYTHON_ENV, cross_check, lumped_kld, tool_python


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_the_lumped_kld_is_a_lower_bound_and_exact_with_the_whole_vocabulary():
    rng = np.random.default_rng(0)
    ref = log_softmax(rng.normal(size=(4, 50, 300)) * 3)
    served = log_softmax(np.log(np.exp(ref) + 0.02 * rng.random(ref.shape)))
    full = (np.exp(ref) * (ref - served)).sum(-1)
    order = np.argsort(-served, -1)
    for k in (1, 5, 20):
        ids = order[..., :k]
        bound = lumped_kld(ref, ids, np.take_along_axis(served, ids, -1))
        assert (bound <= full + 1e-9).all() and bound.mean() > 0
    whole = lumped_kld(ref, order, np.take_along_axis(served, order, -1))
    assert np.allclose(whole, full, atol=1e-9)


def test_the_cross_check_names_both_numbers():
    served = {"top1_agreement": 0.95, "kld_lumped_mean": 0.10}
    cross_check("code/GPTQ-W4A16", 0.96, 0.08, served)  # within the band
    with pytest.raises(PipelineError, match=r"top-1 agreement with the reference 0\.700 through vLLM, 0\.960 through"):
        cross_check("code/GPTQ-W4A16", 0.96, 0.08, {**served, "top1_agreement": 0.70})
    with pytest.raises(PipelineError, match=r"mean KLD at least 0\.9 through vLLM .*, 0\.08 through the stand-in"):
        cross_check("code/GPTQ-W4A16", 0.96, 0.08, {**served, "kld_lumped_mean": 0.9})


def test_a_missing_environment_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(PYTHON_ENV, str(tmp_path / "no-python"))
    with pytest.raises(PipelineError, match=r"LORAFORGE_VLLM_PYTHON=.*no-python: no such Python"):
        tool_python()
