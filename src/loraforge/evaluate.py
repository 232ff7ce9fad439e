"""Measured quality of every artifact: perplexity, KL-divergence and top-1 agreement against a reference.

The reference is the merged HF model computed in float32: its log-probabilities on the evaluation texts are
stored once per adapter (float32, with the token ids; float16 would put a KLD floor of ~4e-5 under
every measurement) and every artifact of that adapter -- the adapter applied
through PEFT, the merged model in its own dtype, the float GGUF, each quantized GGUF -- is scored on exactly
the same tokens. Texts are cut into windows of ``n_ctx`` tokens, each starting with BOS; every position after
the first is scored. HF models are evaluated in batches of windows, llama.cpp one window per call. Scoring is
numpy: evaluating a GGUF does not load torch (whose import alone costs more than scoring the demo's texts).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from .atomic import atomic_file, write_text_atomic
from .errors import PipelineError

log = logging.getLogger(__name__)

GATE_METRICS = {
    "max_mean_kld": ("mean_kld", "max"),
    "max_p99_kld": ("p99_kld", "max"),
    "max_delta_ppl": ("max_delta_ppl", "max"),
    "min_top1": ("top1_agreement", "min"),
}


def token_windows(tokenizer_dir, text_file, n_ctx: int, max_tokens: int) -> np.ndarray:
    """[n_windows, n_ctx] int32: BOS + (n_ctx - 1) text tokens per window; the ragged tail is dropped."""
    from transformers import AutoTokenizer

    path = Path(text_file)
    if not path.exists():
        raise PipelineError(f"{path}: evaluation text does not exist")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    ids = tok(path.read_text(encoding="utf-8"), add_special_tokens=False).input_ids[:max_tokens]
    span = n_ctx - 1
    n = len(ids) // span
    if n == 0:
        raise PipelineError(f"{path}: fewer than {span} tokens, too short for one evaluation window of {n_ctx}")
    bos = tok.bos_token_id if tok.bos_token_id is not None else ids[0]
    body = np.asarray(ids[: n * span], dtype=np.int32).reshape(n, span)
    return np.concatenate([np.full((n, 1), bos, dtype=np.int32), body], axis=1)


# ---------------------------------------------------------------- scorers: windows -> logits


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


class HFScorer:
    def __init__(self, model, batch: int = 8):
        self.model = model.eval()
        self.batch = batch

    def logits(self, windows: np.ndarray):
        import torch

        with torch.no_grad():
            for s in range(0, len(windows), self.batch):
                x = torch.from_numpy(windows[s : s + self.batch].astype(np.int64))
                yield self.model(x).logits.float().numpy()

    def close(self):
        del self.model


class GGUFScorer:
    def __init__(self, path, n_ctx: int, threads: int):
        from .llamacpp import GGUFModel

        self.m = GGUFModel(Path(path), n_ctx=n_ctx, threads=threads)

    def logits(self, windows: np.ndarray):
        for w in windows:
            yield self.m.logits(w.tolist())[None]

    def info(self) -> dict:
        return self.m.info()

    def close(self):
        self.m.close()


def hf_scorer(model_dir, dtype="auto", batch: int = 8) -> HFScorer:
    import torch
    from transformers import AutoModelForCausalLM

    if dtype == "float32":
        dtype = torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
    return HFScorer(model, batch)


def peft_scorer(base_dir, adapters, batch: int = 8) -> HFScorer:
    from .merge import peft_model, validate_inputs

    base, loaded = validate_inputs(base_dir, adapters)
    return HFScorer(peft_model(base.path, loaded, merge_all=False), batch)


# ---------------------------------------------------------------- reference


def compute_reference(model_dir, texts: dict[str, str], out, n_ctx: int = 128, max_tokens: int = 4096,
                      batch: int = 8) -> dict:
    """Float32 log-probs of the merged HF model on every evaluation text -> one safetensors file."""
    from safetensors.numpy import save_file

    t0 = time.time()
    scorer = hf_scorer(model_dir, dtype="float32", batch=batch)
    tensors, meta = {}, {}
    for name, path in texts.items():
        windows = token_windows(model_dir, path, n_ctx, max_tokens)
        lps = [log_softmax(lg[:, :-1]) for lg in scorer.logits(windows)]
        tensors[f"tokens.{name}"] = windows
        tensors[f"logprobs.{name}"] = np.ascontiguousarray(np.concatenate(lps), dtype=np.float32)
        meta[name] = {"file": str(path), "windows": int(len(windows)), "scored_tokens": int(windows[:, 1:].size)}
    info = {"n_ctx": n_ctx, "texts": meta, "seconds": round(time.time() - t0, 3), "model": str(model_dir)}
    with atomic_file(out) as tmp:
        save_file(tensors, str(tmp), metadata={"loraforge": json.dumps(info)})
    log.info("reference logits of %s: %s", model_dir, info)
    return info


def load_reference(path) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        info = json.loads(f.metadata()["loraforge"])
        tokens = {n: f.get_tensor(f"tokens.{n}") for n in info["texts"]}
        lps = {n: f.get_tensor(f"logprobs.{n}") for n in info["texts"]}
    return info, tokens, lps


# ---------------------------------------------------------------- metrics


def _kld_stats(k: np.ndarray) -> dict:
    return {"mean_kld": float(k.mean()), "median_kld": float(np.median(k)), "p99_kld": float(np.quantile(k, 0.99))}


def _score(scorer, windows: np.ndarray, ref_lp: np.ndarray | None) -> dict:
    targets = windows[:, 1:].astype(np.int64)
    nll_sum, n, klds, agree, ref_nll = 0.0, 0, [], 0, 0.0
    row = 0
    for lg in scorer.logits(windows):
        b = lg.shape[0]
        lp = log_softmax(lg[:, :-1].astype(np.float32))
        tgt = targets[row : row + b, :, None]
        if ref_lp is not None:
            ref = ref_lp[row : row + b]
            v = min(ref.shape[-1], lp.shape[-1])
            lp, ref = lp[..., :v], ref[..., :v]
            klds.append(np.maximum((np.exp(ref) * (ref - lp)).sum(-1), 0).ravel())
            agree += int((ref.argmax(-1) == lp.argmax(-1)).sum())
            ref_nll -= float(np.take_along_axis(ref, tgt, -1).sum(dtype=np.float64))
        nll_sum -= float(np.take_along_axis(lp, tgt, -1).sum(dtype=np.float64))
        n += tgt.size
        row += b
    out = {"scored_tokens": n, "ppl": math.exp(nll_sum / n)}
    if ref_lp is not None:
        k = np.concatenate(klds).astype(np.float64)
        out.update(ref_ppl=math.exp(ref_nll / n), **_kld_stats(k), top1_agreement=agree / n)
        out["delta_ppl"] = out["ppl"] - out["ref_ppl"]
        out["_kld"] = k
    return out


def _artifact_size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return path.stat().st_size


def evaluate(kind: str, path, reference=None, texts: dict[str, str] | None = None, n_ctx: int = 128,
             max_tokens: int = 4096, threads: int = 1, base_dir=None, adapters=None, batch: int = 8) -> dict:
    """Score one artifact. ``kind``: gguf (a GGUF file), hf (a model dir, own dtype), peft (base+adapters).

    With ``reference`` the windows come from it and KLD/top-1/ΔPPL are measured; without, only PPL (on
    ``texts``, tokenized with the artifact's tokenizer).
    """
    t_load = time.time()
    if reference is not None:
        info, tokens, lps = load_reference(reference)
        n_ctx = info["n_ctx"]
    else:
        if not texts:
            raise PipelineError("evaluation without a reference needs texts")
        tok_dir = path if kind == "hf" else base_dir
        tokens = {n: token_windows(tok_dir, p, n_ctx, max_tokens) for n, p in texts.items()}
        lps = {n: None for n in tokens}
    if kind == "gguf":
        scorer = GGUFScorer(path, n_ctx, threads)
    elif kind == "hf":
        scorer = hf_scorer(path, batch=batch)
    elif kind == "peft":
        scorer = peft_scorer(base_dir, adapters, batch=batch)
    else:
        raise PipelineError(f"unknown artifact kind {kind!r}")
    load_s = time.time() - t_load
    t0 = time.time()
    per_text, all_kld = {}, []
    try:
        for name, windows in tokens.items():
            res = _score(scorer, windows, lps[name])
            if "_kld" in res:
                all_kld.append(res.pop("_kld"))
            per_text[name] = res
        gguf = scorer.info() if kind == "gguf" else {}  # from this load, not a second one
    finally:
        scorer.close()
    eval_s = time.time() - t0
    n = sum(r["scored_tokens"] for r in per_text.values())
    out = {
        "artifact": str(path) if path else "peft:" + ",".join(str(a["path"]) for a in adapters),
        "kind": kind,
        "n_ctx": n_ctx,
        "texts": per_text,
        "scored_tokens": n,
        "eval_seconds": round(eval_s, 3),
        "load_seconds": round(load_s, 3),
        "tokens_per_second": round(n / eval_s, 1) if eval_s > 0 else None,
    }
    if all_kld:
        k = np.concatenate(all_kld)
        out.update(
            **_kld_stats(k),
            top1_agreement=sum(r["top1_agreement"] * r["scored_tokens"] for r in per_text.values()) / n,
            max_delta_ppl=max(r["delta_ppl"] for r in per_text.values()),
        )
    if path and kind != "peft":
        p = Path(path)
        out["size_bytes"] = _artifact_size(p)
        if gguf:
            out["bits_per_weight"] = gguf["bits_per_weight"]
    return out


def check_gates(result: dict, gates: dict | None, label: str) -> list[str]:
    """Failures of the configured quality gates, each one line naming artifact, metric, threshold and value."""
    failures = []
    for gate, threshold in (gates or {}).items():
        if gate not in GATE_METRICS:
            raise PipelineError(f"unknown quality gate {gate!r} (one of {', '.join(GATE_METRICS)})")
        metric, how = GATE_METRICS[gate]
        if metric not in result:
            raise PipelineError(f"{label}: gate {gate} needs {metric}, which was not measured for this artifact")
        value = result[metric]
        if (how == "max" and value > threshold) or (how == "min" and value < threshold):
            failures.append(f"{label}: quality gate failed: {metric} = {value:.6g}, {gate} = {threshold:g}")
    return failures


def evaluate_artifact(out_json, label: str, gates: dict | None = None, **kwargs) -> dict:
    """The evaluate_artifact rule: measure, then apply gates; a failing gate fails the rule, no JSON written."""
    result = evaluate(**kwargs)
    result["label"] = label
    result["gates"] = gates or {}
    log.info("evaluation of %s: %s", label, json.dumps(result, indent=1))
    failures = check_gates(result, gates, label)
    if failures:
        for f in failures[1:]:
            log.error("%s", f)
        raise PipelineError(failures[0] + (f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""))
    write_text_atomic(out_json, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result
