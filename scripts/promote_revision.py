"""Rule promote_revision: move the policy's alias to the new revision if its A/B test says so
(loraforge.registry.promote)."""

import json

from loraforge.registry.promote import promote_revision
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p = sm.params
    candidate = next(r for r in sm.input.receipts if r.endswith(f"/{p.policy['candidate_quant']}.json"))
    receipt = json.loads(open(candidate).read())
    run(
        sm.log[0],
        promote_revision,
        threads=sm.threads,
        registry=p.registry,
        name=sm.wildcards.adapter,
        version=receipt["version"],
        policy=dict(p.policy),
        texts=dict(zip(p.names, sm.input.texts, strict=True)),
        decision_json=sm.output.decision,
        n_ctx=p.n_ctx,
        max_tokens=p.max_tokens,
    )
