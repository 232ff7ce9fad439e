"""Rule train_demo_adapter: train one demo LoRA adapter (loraforge.demo.train_adapter)."""

from loraforge.demo import train_adapter
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    run(
        sm.log[0],
        train_adapter,
        threads=sm.threads,
        base_dir=sm.input.base,
        domain=sm.wildcards.domain,
        out_dir=sm.output.adapter_dir,
        seed=sm.params.seed,
        steps=sm.params.steps,
    )
