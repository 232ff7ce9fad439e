"""Rule evaluate_base: perplexity of the base model on the evaluation texts (loraforge.evaluation)."""

from loraforge.evaluation import evaluate_artifact
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p = sm.params
    run(
        sm.log[0],
        evaluate_artifact,
        threads=sm.threads,
        out_json=sm.output.metrics,
        label="base",
        kind="hf",
        path=sm.input.base,
        texts=dict(zip(p.names, sm.input.texts, strict=True)),
        n_ctx=p.n_ctx,
        max_tokens=p.max_tokens,
        batch=p.batch,
        budget_mb=p.budget_mb,
    )
