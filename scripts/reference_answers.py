"""Rule reference_answers: the adapter's own answers to evaluation.prompts, through PEFT in float32
(loraforge.evaluation.generation.reference_answers)."""

from loraforge.evaluation.generation import reference_answers
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, i = sm.params, sm.input
    run(
        sm.log[0],
        reference_answers,
        threads=sm.threads,
        base_dir=i.base,
        adapters=[{"path": a, "weight": wt} for a, wt in zip(i.adapters, p.weights, strict=True)],
        prompts_file=i.prompts,
        out=sm.output.answers,
        max_tokens=p.max_tokens,
        budget_mb=p.budget_mb,
    )
