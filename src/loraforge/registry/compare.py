"""A/B comparison of two versions of a model: the same artifact type of each, scored on the same tokens.

For each text, both GGUFs score the same windows (llama.cpp tokenizes the text from A's vocabulary, and B must
tokenize it identically). Per window we keep the summed negative log-likelihood of each; the statistic is the
mean per-token NLL difference B - A (nats/token; negative: B predicts the text better), with a 95% confidence
interval and a two-sided p-value from a paired bootstrap over windows (windows resampled with replacement,
both versions' scores kept together). KL-divergence of B from A and top-1 agreement say how far B moved.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..errors import PipelineError
from ..evaluation.metrics import log_softmax
from ..evaluation.windows import read_text
from .core import Registry

log = logging.getLogger(__name__)


def paired_bootstrap(
    nll_a: np.ndarray, nll_b: np.ndarray, tokens: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> dict:
    """Mean per-token NLL difference (B - A) with a bootstrap 95% CI and two-sided p-value, resampling windows."""
    diff = nll_b - nll_a
    delta = float(diff.sum() / tokens.sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
    stats = diff[idx].sum(axis=1) / tokens[idx].sum(axis=1)
    lo, hi = np.quantile(stats, [0.025, 0.975])
    p = 2 * min(float((stats <= 0).mean()), float((stats >= 0).mean()))
    return {"delta_nll": delta, "ci95": [float(lo), float(hi)], "p_value": max(min(p, 1.0), 1 / n_boot)}


def _windows(ids: list[int], n_ctx: int, bos: int | None) -> list[list[int]]:
    span = n_ctx - (bos is not None)
    n = len(ids) // span
    return [([bos] if bos is not None else []) + ids[i * span : (i + 1) * span] for i in range(n)]


def score_pair(
    gguf_a,
    gguf_b,
    texts: dict[str, str],
    n_ctx: int = 256,
    max_tokens: int = 2048,
    threads: int = 1,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Compare two GGUFs on ``texts`` (name -> file): per text, the statistics described in the module doc."""
    from ..llamacpp.library import GGUFModel

    out = {}
    with GGUFModel(gguf_a, n_ctx=n_ctx, threads=threads) as a, GGUFModel(gguf_b, n_ctx=n_ctx, threads=threads) as b:
        bos = a.llm.token_bos() if a.adds_bos() else None
        for name, path in texts.items():
            text = read_text(path)
            ids = a.tokenize(text, add_bos=False)[:max_tokens]
            if b.tokenize(text, add_bos=False)[:max_tokens] != ids:
                raise PipelineError(
                    f"{path}: the two versions tokenize it differently; per-token scores are not comparable"
                )
            windows = _windows(ids, n_ctx, bos)
            if len(windows) < 2:
                raise PipelineError(f"{path}: {len(ids)} tokens, too short for two windows of {n_ctx}")
            nll_a, nll_b, klds, agree, n = [], [], [], 0, []
            for w in windows:
                la = log_softmax(a.logits(w)[:-1])
                lb = log_softmax(b.logits(w)[:-1])
                tgt = np.asarray(w[1:])[:, None]
                nll_a.append(-float(np.take_along_axis(la, tgt, -1).sum(dtype=np.float64)))
                nll_b.append(-float(np.take_along_axis(lb, tgt, -1).sum(dtype=np.float64)))
                klds.append(np.maximum((np.exp(la) * (la - lb)).sum(-1), 0))
                agree += int((la.argmax(-1) == lb.argmax(-1)).sum())
                n.append(len(w) - 1)
            tokens = np.asarray(n, dtype=np.float64)
            na, nb = np.asarray(nll_a), np.asarray(nll_b)
            res = paired_bootstrap(na, nb, tokens, n_boot, seed)
            res.update(
                windows=len(windows),
                tokens=int(tokens.sum()),
                ppl_a=math.exp(na.sum() / tokens.sum()),
                ppl_b=math.exp(nb.sum() / tokens.sum()),
                mean_kld_b_from_a=float(np.concatenate(klds).mean()),
                top1_agreement=agree / tokens.sum(),
            )
            out[name] = res
            log.info(
                "%s: B - A = %+.4f nats/token, 95%% CI [%+.4f, %+.4f], p = %.3g",
                name,
                res["delta_nll"],
                *res["ci95"],
                res["p_value"],
            )
    return out


def compare_versions(
    registry,
    name: str,
    a: int,
    b: int,
    variant: str,
    texts: dict[str, str],
    n_ctx: int = 256,
    max_tokens: int = 2048,
    threads: int = 1,
    n_boot: int = 2000,
    seed: int = 0,
    reg: Registry | None = None,
) -> dict:
    """Score version ``b`` against ``a`` (their ``variant`` GGUFs, verified) and store the result with them."""
    reg = reg or Registry(registry, create=False)
    registered = {f"v{v}": measured_rows(reg.get(name, v), variant) for v in (a, b)}
    if variant.startswith("lora-"):  # a LoRA GGUF is no model alone: the numbers measured with each base type
        mva = reg.get(name, a)
        mva.artifact(variant)  # one line if there is no such artifact
        return {"name": name, "a": a, "b": b, "variant": variant, "texts": {}, "registered": registered}
    _mva, fa = reg.artifact_file(name, variant, version=a)
    _mvb, fb = reg.artifact_file(name, variant, version=b)
    result = {
        "name": name,
        "a": a,
        "b": b,
        "variant": variant,
        "n_ctx": n_ctx,
        "n_boot": n_boot,
        "seed": seed,
        "texts": score_pair(fa, fb, texts, n_ctx, max_tokens, threads, n_boot, seed),
    }
    result["id"] = reg.add_comparison(name, a, b, variant, result)
    result["registered"] = registered
    return result


def measured_rows(mv, variant: str) -> list[dict]:
    """What the pipeline measured for one version's ``variant`` when it registered it (against that version's own
    float32 reference): a row per evaluation, a LoRA GGUF's per base type."""
    rows = []
    for a in mv.artifacts:
        if a.variant != variant:
            continue
        for label, ev in a.measured():
            rows.append(
                {
                    "artifact": label,
                    "mean_kld": ev.get("mean_kld"),
                    "top1": ev.get("top1_agreement"),
                    "ppl": {t: r["ppl"] for t, r in ev.get("texts", {}).items()},
                }
            )
    return rows


def table(result: dict) -> str:
    rows = []
    if result.get("registered"):
        rows.append(
            f"{result['name']} {result['variant']}: as measured at registration, against each version's reference"
        )
        for version, measured in result["registered"].items():
            for r in measured or [{"artifact": result["variant"], "mean_kld": None, "top1": None, "ppl": {}}]:
                ppl = ", ".join(f"{t} {p:.3f}" for t, p in sorted(r["ppl"].items())) or "not measured"
                kld = "not measured" if r["mean_kld"] is None else f"{r['mean_kld']:.4g}"
                top1 = "not measured" if r["top1"] is None else f"{r['top1']:.3f}"
                rows.append(f"  {version:<4} {r['artifact']:<22} mean KLD {kld:<12} top-1 {top1:<12} PPL {ppl}")
    if not result["texts"]:
        rows.append("(a LoRA GGUF is no model alone: the paired A/B test runs on merged GGUFs, e.g. --quant Q8_0)")
        return "\n".join(rows)
    rows.append(
        f"{result['name']} v{result['b']} vs v{result['a']} ({result['variant']}), per text: B - A in nats/token"
    )
    rows.append(
        f"{'text':<12} {'delta_nll':>10} {'95% CI':>22} {'p':>8} {'PPL A':>9} {'PPL B':>9} {'KLD B|A':>9} {'top-1':>6}"
    )
    for name, r in result["texts"].items():
        ci = f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]"
        rows.append(
            f"{name:<12} {r['delta_nll']:>+10.4f} {ci:>22} {r['p_value']:>8.3g} {r['ppl_a']:>9.3f} "
            f"{r['ppl_b']:>9.3f} {r['mean_kld_b_from_a']:>9.4f} {r['top1_agreement']:>6.3f}"
        )
    return "\n".join(rows)
