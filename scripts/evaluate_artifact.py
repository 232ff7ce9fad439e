"""Rule evaluate_artifact: PPL / KLD / top-1 of one artifact, quality gates (loraforge.measure.evaluate_one)."""

from loraforge.measure import evaluate_one
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, w, i = sm.params, sm.wildcards, sm.input
    run(
        sm.log[0],
        evaluate_one,
        threads=sm.threads,
        out_json=sm.output.metrics,
        label=f"{w.model}/{w.artifact}",
        kind=p.kind,
        inputs={k: v if isinstance(v, str) else list(v) for k, v in i.items()},
        gates=dict(p.gates),
        weights=list(p.weights),
        vllm=p.vllm,
        lm_eval=p.lm_eval,
        batch=p.batch,
        budget_mb=p.budget_mb,
    )
