"""Rule build_demo_base: train the tiny demo base model (loraforge.demo.build_base)."""

from loraforge.demo import build_base
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    run(
        sm.log[0],
        build_base,
        threads=sm.threads,
        out_dir=sm.output.model_dir,
        seed=sm.params.seed,
        steps=sm.params.steps,
    )
