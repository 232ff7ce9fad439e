"""Rule train_demo_adapter: a LoRA adapter trained on one demo domain's text (loraforge.demo.train_lora)."""

from loraforge.demo import train_lora
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p = sm.params
    run(
        sm.log[0],
        train_lora,
        threads=sm.threads,
        base_dir=sm.input.base,
        text_file=sm.input.text,
        out_dir=sm.output.adapter_dir,
        steps=p.steps,
        r=p.rank,
        seed=p.seed,
    )
