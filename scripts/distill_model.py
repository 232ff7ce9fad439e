"""Rule distill_model: train the pruned model on the merged model's distribution (loraforge.compression.distill)."""

from loraforge.compression.distill import distill
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    d = dict(sm.params.distill)
    run(
        sm.log[0],
        distill,
        threads=sm.threads,
        teacher_dir=sm.input.teacher,
        student_dir=sm.input.student,
        text=sm.input.text,
        out_dir=sm.output.model_dir,
        curve_json=sm.output.curve,
        steps=d.get("steps", 60),
        lr=d.get("lr", 1e-4),
        batch=d.get("batch", 2),
        seed=d.get("seed", 0),
        n_ctx=sm.params.n_ctx,
    )
