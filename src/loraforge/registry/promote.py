"""Promotion decided by an A/B test: a new revision takes an alias only when the evidence says so.

A policy (config ``promote``) names the alias, the artifact type compared (``candidate_quant``) and what each
evaluation text requires of the candidate B against the alias's current version A, in nats per token of the
paired bootstrap (see :mod:`.compare`):

- ``better``: the 95% confidence interval of NLL(B) - NLL(A) lies below zero;
- ``{not_worse_than: x}``: its upper end is at most ``x``.

With ``answers`` (the generation checks, ``evaluation.prompts``) the candidate's answers are compared with the
current version's, prompt by prompt as registered: ``{accuracy: not_worse, stop_rate: not_worse}`` refuses a
candidate whose share of correct (or stopped) answers is lower with confidence, i.e. the 95% interval of the paired
bootstrap of B - A over prompts lies below zero.

The decision, its numbers and its reason go to the alias history whether the alias moves or not. A refusal is
one line in the log, not a failed build, unless the policy says ``fail_on_refusal``. A first version takes a
free alias without a test (there is nothing to compare with).
"""

from __future__ import annotations

import json
import logging

from ..errors import PipelineError
from ..io.publish import write_text_atomic
from .compare import compare_versions
from .core import Registry

log = logging.getLogger(__name__)


def judge(requirements: dict, texts: dict) -> tuple[bool, list[str]]:
    """(all met, one clause per requirement) from the comparison's per-text results."""
    ok, why = True, []
    for text, req in requirements.items():
        r = texts[text]
        lo, hi = r["ci95"]
        if req == "better":
            met = hi < 0
            why.append(
                f"{text}: {r['delta_nll']:+.4f} nats/token, CI [{lo:+.4f}, {hi:+.4f}] "
                f"{'is below 0 (better)' if met else 'does not exclude 0 or worse (not shown better)'}"
            )
        else:
            bound = float(req["not_worse_than"])
            met = hi <= bound
            why.append(
                f"{text}: {r['delta_nll']:+.4f} nats/token, CI upper {hi:+.4f} "
                f"{'<=' if met else '>'} {bound:g} ({'not worse' if met else 'worse than allowed'})"
            )
        ok = ok and met
    return ok, why


ANSWER_OUTCOMES = {"accuracy": lambda row: row.get("correct"), "stop_rate": lambda row: row["finish"] == "stop"}


def paired_difference(a: list[float], b: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """mean(b) - mean(a) over paired outcomes, with its percentile bootstrap 95% interval (pairs resampled)."""
    import numpy as np

    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    lo, hi = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
    return float(d.mean()), float(lo), float(hi)


def judge_answers(requirements: dict, current: dict, candidate: dict, label: str) -> tuple[bool, list[str], dict]:
    """(all met, one clause per requirement, the numbers) from two versions' registered evaluations of ``label``:
    their generation checks, paired by prompt. Refused in one line where either has none or they answered other
    prompts."""
    ga, gb = current.get("generation"), candidate.get("generation")
    if not ga or not gb:
        which = "the current version" if not ga else "the candidate"
        raise PipelineError(f"promote.answers: {which}'s {label} has no generation checks (evaluation.prompts)")
    if ga["prompts_sha256"] != gb["prompts_sha256"]:
        raise PipelineError(f"promote.answers: the two versions' {label} answered different prompts files")
    rows_a = {r["id"]: r for r in ga["answers"]}
    rows_b = {r["id"]: r for r in gb["answers"]}
    ok, why, numbers = True, [], {}
    for measure in requirements:
        outcome = ANSWER_OUTCOMES[measure]
        ids = [i for i in rows_a if i in rows_b and outcome(rows_a[i]) is not None]
        if not ids:
            raise PipelineError(f"promote.answers.{measure}: no prompt of {label} has a scored answer")
        delta, lo, hi = paired_difference([outcome(rows_a[i]) for i in ids], [outcome(rows_b[i]) for i in ids])
        met = hi >= 0
        numbers[measure] = {"delta": delta, "ci95": [lo, hi], "prompts": len(ids)}
        why.append(
            f"{measure} {delta:+.3f} over {len(ids)} prompts, CI [{lo:+.3f}, {hi:+.3f}] "
            f"{'(not worse)' if met else 'lies below 0 (worse)'}"
        )
        ok = ok and met
    return ok, why, numbers


def promote_revision(
    registry,
    name: str,
    version: int,
    policy: dict,
    texts: dict[str, str],
    decision_json,
    n_ctx: int = 256,
    max_tokens: int = 2048,
    threads: int = 1,
) -> dict:
    """Apply ``policy`` to version ``version`` of ``name``; write the decision to ``decision_json``."""
    alias, variant = policy["alias"], policy["candidate_quant"]
    requirements = policy.get("require") or {}
    missing = sorted(set(requirements) - set(texts))
    if missing:
        raise PipelineError(f"promote.require names {', '.join(missing)}, which evaluation.texts does not have")
    reg = Registry(registry, create=False)
    try:
        current = next((a["version"] for a in reg.aliases(name) if a["alias"] == alias), None)
        decision = {"name": name, "alias": alias, "candidate": version, "current": current, "variant": variant}
        if current == version:
            decision.update(moved=False, reason=f"{alias} already points at v{version}")
        elif current is None:
            reg.promote(name, version, alias, reason=f"first version with the alias {alias}: nothing to compare with")
            decision.update(moved=True, reason="no version had the alias")
        else:
            result = compare_versions(
                registry, name, current, version, variant, texts, n_ctx, max_tokens, threads, reg=reg
            )
            ok, why = judge(requirements, result["texts"])
            evidence = {"comparison": result["id"], "texts": result["texts"], "require": requirements}
            if policy.get("answers"):
                evals = [dict(reg.get(name, v).artifact(variant).measured())[variant] for v in (current, version)]
                met, clauses, numbers = judge_answers(policy["answers"], *evals, variant)
                ok, why = ok and met, [*why, *clauses]
                evidence["answers"] = numbers
            reason = f"A/B v{version} vs v{current} ({variant}): " + "; ".join(why)
            if ok:
                reg.promote(name, version, alias, reason=reason, evidence=evidence)
            else:
                reg.record_decision(name, alias, version, reason, evidence)
            decision.update(moved=ok, reason=reason, comparison=result["id"])
    finally:
        reg.close()
    line = (
        f"{name}: {alias} -> v{version}"
        if decision["moved"]
        else f"{name}: {alias} stays at v{current}, v{version} not promoted"
    ) + f" ({decision['reason']})"
    write_text_atomic(decision_json, json.dumps(decision, indent=2) + "\n")
    if not decision["moved"] and current not in (None, version):
        log.warning("%s", line)
        if policy.get("fail_on_refusal"):
            raise PipelineError(line)
    else:
        log.info("%s", line)
    return decision
