"""Rule prune_model: drop the least important decoder layers and MLP channels (loraforge.compression.prune)."""

from loraforge.compression.prune import prune
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p = sm.params
    run(
        sm.log[0],
        prune,
        threads=sm.threads,
        teacher_dir=sm.input.teacher,
        text=sm.input.text,
        out_dir=sm.output.model_dir,
        sidecar=sm.output.scores,
        spec=dict(p.spec),
        n_ctx=p.n_ctx,
        max_tokens=p.max_tokens,
        row_multiple=p.row_multiple,
    )
