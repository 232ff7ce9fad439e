"""Rule compute_reference: float32 log-probs of the adapter applied through PEFT, unmerged: the model the adapter
defines, which every artifact of it is measured against (loraforge.evaluation.compute_reference)."""

from loraforge.evaluation import compute_reference
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, i = sm.params, sm.input
    adapters = [{"path": a, "weight": wt} for a, wt in zip(i.adapters, p.weights, strict=True)]
    run(
        sm.log[0],
        compute_reference,
        threads=sm.threads,
        model_dir=i.base,
        adapters=adapters,
        texts=dict(zip(p.names, sm.input.texts, strict=True)),
        out=sm.output.reference,
        n_ctx=p.n_ctx,
        max_tokens=p.max_tokens,
        batch=p.batch,
        budget_mb=p.budget_mb,
    )
