"""Promotion decided by an A/B test: a new revision takes an alias only when the evidence says so.

A policy (config ``promote``) names the alias, the artifact type compared (``candidate_quant``) and what each
evaluation text requires of the candidate B against the alias's current version A, in nats per token of the
paired bootstrap (see :mod:`.compare`):

- ``better``: the 95% confidence interval of NLL(B) - NLL(A) lies below zero;
- ``{not_worse_than: x}``: its upper end is at most ``x``.

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
