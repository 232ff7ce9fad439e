"""Rule evaluate_artifact: PPL / KLD / top-1 of one artifact, quality gates (loraforge.evaluate)."""

from loraforge.evaluate import evaluate_artifact
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, w = sm.params, sm.wildcards
    run(sm.log[0], evaluate_artifact, threads=sm.threads, out_json=sm.output.metrics,
        label=f"{w.adapter}/{w.artifact}", gates=dict(p.gates), kind=p.kind,
        path=sm.input.get("artifact"), reference=sm.input.reference, base_dir=p.base_dir,
        adapters=list(p.adapters), batch=p.batch)
