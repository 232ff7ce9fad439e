"""The probe comparison of verify-served (loraforge.serving.compare), on hand-made probes; real servers answer it in
tests/test_workflow.py (llama-server) and tests/test_hfquant.py (vLLM)."""

from __future__ import annotations

import pytest

from loraforge.errors import PipelineError
from loraforge.serving import compare, probe_record

PROMPT = [1, 5, 9]


def probe(steps):
    return probe_record("llama-server", PROMPT, [(t, lp, [(t, lp), (t + 1, ru)]) for t, lp, ru in steps])


REGISTERED = probe([(10, -0.5, -3.0), (11, -1.0, -1.05), (12, -0.2, -4.0)])  # token 2 is a near-tie


def test_the_same_continuation_within_the_tolerance_is_the_registered_version():
    got = compare(REGISTERED, probe([(10, -0.52, -3.0), (11, -1.01, -1.0), (12, -0.21, -4.0)]))
    assert got["ok"] and got["compared_tokens"] == 3 and got["mean_abs_logprob_diff"] == pytest.approx(0.01 / 0.75)


def test_log_probs_beyond_the_tolerance_are_another_model():
    got = compare(REGISTERED, probe([(10, -0.7, -3.0), (11, -1.2, -1.0), (12, -0.4, -4.0)]))
    assert not got["ok"] and got["why"] == "mean |Δ log-prob| 0.2000 over 3 tokens is above the tolerance 0.05"


def test_another_token_after_a_near_tie_stops_the_comparison_but_anywhere_else_fails():
    near_tie = compare(REGISTERED, probe([(10, -0.5, -3.0), (99, -1.0, -1.05), (98, -0.2, -4.0)]))
    assert near_tie["ok"] and near_tie["compared_tokens"] == 1
    first = compare(REGISTERED, probe([(99, -0.5, -3.0), (11, -1.0, -1.05), (12, -0.2, -4.0)]))
    assert not first["ok"] and first["why"].startswith("token 1 of the greedy continuation is 99 where the registered")
    clear = compare(REGISTERED, probe([(10, -0.5, -3.0), (11, -1.0, -1.05), (97, -0.2, -4.0)]))
    assert not clear["ok"] and "token 3 " in clear["why"] and "runner-up -4.0" in clear["why"]


def test_another_prompt_is_refused():
    with pytest.raises(PipelineError, match="another prompt"):
        compare(REGISTERED, {**REGISTERED, "prompt": [1, 2]})


def test_a_llama_server_started_here_spins_briefly_unless_the_user_set_openmp_waiting(f16_gguf, monkeypatch):
    """loraforge.llamacpp.server: the server's OpenMP threads spin 1,000 times before they sleep, where the user set
    neither GOMP_SPINCOUNT nor OMP_WAIT_POLICY; the user's setting is what the server gets otherwise."""
    from pathlib import Path

    from loraforge.llamacpp.server import llama_server

    def environ(pid) -> dict[str, str]:
        pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with llama_server(f16_gguf, n_ctx=64, threads=1) as server:
        assert environ(server.proc.pid)["GOMP_SPINCOUNT"] == "1000"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with llama_server(f16_gguf, n_ctx=64, threads=1) as server:
        env = environ(server.proc.pid)
        assert env["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in env
