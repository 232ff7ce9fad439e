"""The reference every artifact of an adapter is scored against: the model the adapter defines, the base with the
adapter applied through PEFT, unmerged, in float32; its log-probabilities on the evaluation texts, stored once
(float32 with the token ids: float16 would put a KLD floor of ~4e-5 under every measurement). The merged model is
one artifact among the others, measured against it (its KLD is the merge's rounding to the base's dtype)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import PipelineError
from ..io.publish import atomic_file
from ..progress import Progress
from .metrics import log_softmax
from .scorers import hf_scorer, peft_scorer
from .windows import token_windows

log = logging.getLogger(__name__)


def compute_reference(
    model_dir,
    texts: dict[str, str],
    out,
    n_ctx: int = 128,
    max_tokens: int = 4096,
    batch: int = 8,
    budget_mb: float | None = None,
    adapters: list[dict] | None = None,
) -> dict:
    """Float32 log-probs of the HF model in ``model_dir`` on every evaluation text -> one safetensors file
    (the model streamed layer by layer when it does not fit ``budget_mb``). With ``adapters`` ([{path, weight}])
    ``model_dir`` is their base and the reference is the adapters applied through PEFT, unmerged, in float32:
    a LoRA-only revision, which has no merged model."""
    from safetensors.numpy import save_file

    t0 = time.time()
    if adapters:
        scorer = peft_scorer(model_dir, adapters, batch=batch, budget_mb=budget_mb, n_ctx=n_ctx, dtype="float32")
    else:
        scorer = hf_scorer(model_dir, dtype="float32", batch=batch, budget_mb=budget_mb, n_ctx=n_ctx)
    tensors, meta = {}, {}
    windows_of = {name: token_windows(model_dir, path, n_ctx, max_tokens) for name, path in texts.items()}
    progress = Progress(f"reference of {model_dir}", sum(w.size for w in windows_of.values()), "tokens")
    for name, path in texts.items():
        windows = windows_of[name]
        lps = []
        for lg in scorer.logits(windows):
            lps.append(log_softmax(lg[:, :-1]))
            progress.update(lg.shape[0] * lg.shape[1])
        tensors[f"tokens.{name}"] = windows
        tensors[f"logprobs.{name}"] = np.ascontiguousarray(np.concatenate(lps), dtype=np.float32)
        meta[name] = {"file": str(path), "windows": int(len(windows)), "scored_tokens": int(windows[:, 1:].size)}
    progress.close()
    info = {"n_ctx": n_ctx, "texts": meta, "seconds": round(time.time() - t0, 3), "model": str(model_dir)}
    if adapters:
        info["adapters"] = [{"path": str(a["path"]), "weight": a["weight"]} for a in adapters]
    info.update(scorer.info())
    scorer.close()
    with atomic_file(out) as tmp:
        save_file(tensors, str(tmp), metadata={"loraforge": json.dumps(info)})
    log.info("reference logits of %s: %s", model_dir, info)
    return info


def load_reference(path) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(info, token windows per text, reference log-probs per text)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        info = json.loads(f.metadata()["loraforge"])
        tokens = {n: f.get_tensor(f"tokens.{n}") for n in info["texts"]}
        lps = {n: f.get_tensor(f"logprobs.{n}") for n in info["texts"]}
    return info, tokens, lps


def reference_window(reference, adapters: list[dict]) -> tuple[list[int], np.ndarray]:
    """The first window's token ids and float32 log-probs ([n - 1, vocab]: of tokens 1..n-1) of the PEFT reference
    of ``adapters`` ([{path, weight}]); refuses, in one line, a reference of anything else."""
    info, tokens, lps = load_reference(reference)
    made_of = [(Path(a["path"]).resolve(), float(a["weight"])) for a in info.get("adapters", [])]
    wanted = [(Path(a["path"]).resolve(), float(a["weight"])) for a in adapters]
    if made_of != wanted:
        shown = ", ".join(f"{p} at weight {w:g}" for p, w in wanted)
        raise PipelineError(
            f"{reference}: not the PEFT reference of {shown} (it is of {info.get('adapters') or info.get('model')})"
        )
    name = next(iter(tokens))
    return tokens[name][0].tolist(), lps[name][0]


def save_window(out, ids: list[int], logprobs: np.ndarray, info: dict) -> None:
    """One window's ids and float32 log-probs ([len(ids) - 1, vocab]) in the reference's own format, so that
    :func:`gguf_against_reference` reads it: the merge check's log-probs of the merged model, which the checks of
    its GGUFs compare with instead of running it again."""
    from safetensors.numpy import save_file

    info = {**info, "n_ctx": len(ids), "texts": {"check": {"windows": 1, "scored_tokens": len(ids) - 1}}}
    tensors = {
        "tokens.check": np.asarray([ids], dtype=np.int64),
        "logprobs.check": np.ascontiguousarray(logprobs[None], dtype=np.float32),
    }
    with atomic_file(out) as tmp:
        save_file(tensors, str(tmp), metadata={"loraforge": json.dumps(info)})


def window_scores(logits: np.ndarray, ids: list[int], evaluation_reference) -> dict | None:
    """The scores the evaluation would compute on its reference's first window (:func:`.metrics.token_scores`),
    from a GGUF's ``logits`` on the tokens ``ids`` that its build check ran anyway: stored in the GGUF's sidecar,
    so that its evaluation scores the other windows only (at 8B, a window of a BF16 GGUF is 20 s). None where the
    check's tokens are not that window's."""
    from ..io.hashing import sha256_file
    from .metrics import token_scores

    info, tokens, lps = load_reference(evaluation_reference)
    name = next(iter(tokens))
    if tokens[name][0].tolist() != list(ids):
        log.info("%s: the check's tokens are not its first window; the evaluation scores it", evaluation_reference)
        return None
    scores = token_scores(logits[None], np.asarray([ids])[:, 1:], lps[name][:1])
    return {
        "text": name,
        "windows": 1,
        "n_ctx": int(info["n_ctx"]),
        "reference_sha256": sha256_file(evaluation_reference),
        **{k: v[0].tolist() for k, v in scores.items()},  # of the one window
    }


def gguf_against_reference(
    gguf, reference, threads: int = 1, model_dir=None, evaluation_reference=None
) -> tuple[dict, dict]:
    """llama.cpp's log-probs of ``gguf`` against a stored float32 window of its HF model (the merge check's,
    :func:`save_window`; or a reference of that model) on its first window: the checks of a merged model's GGUFs,
    which then run no HF model and no second GGUF (at 8B a streamed HF pass is a minute or more, a BF16 GGUF's pass
    half that). Log-probs, not logits: a reference stores those, and a
    constant shift of a row of logits does not change them. ``model_dir``: refuse a reference of another model.

    With ``evaluation_reference`` (the adapter's, which its GGUFs are evaluated against) the comparison also holds,
    under ``evaluation_window``, the evaluation's scores of these logits (:func:`window_scores`).

    Returns (comparison, GGUF info) from the one load of the GGUF."""
    from ..llamacpp.library import GGUFModel

    info, tokens, lps = load_reference(reference)
    if model_dir is not None and (
        info.get("adapters") or Path(info.get("model", "")).resolve() != Path(model_dir).resolve()
    ):
        raise PipelineError(
            f"{reference}: not the float32 reference of {model_dir} "
            f"(it is of {info.get('adapters') or info.get('model')})"
        )
    name = next(iter(tokens))
    ids, ref = tokens[name][0].tolist(), lps[name][0].astype(np.float64)  # ref: log-probs of tokens 1..n-1
    with GGUFModel(Path(gguf), n_ctx=max(len(ids), 8), threads=threads) as g:
        got, ginfo = g.logits(ids), g.info()
    finite = bool(np.isfinite(got).all())
    lq = log_softmax(got[: len(ref)].astype(np.float64))
    res = {
        "tokens": len(ids),
        "finite_logits": finite,
        "max_abs_logprob_diff": float(np.abs(lq - ref).max()),
        "top1_agreement": float((lq.argmax(-1) == ref.argmax(-1)).mean()),
        "mean_kld": float((np.exp(ref) * (ref - lq)).sum(-1).mean()),
        "reference": "HF model, float32 (the merge check's window)" if "merge_check" in info else "HF model, float32",
        "reference_file": str(reference),
    }
    if evaluation_reference is not None and finite:
        res["evaluation_window"] = window_scores(got, ids, evaluation_reference)
    return res, ginfo
