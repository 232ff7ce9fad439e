"""Rule write_demo_prompts: the demo's generation checks, chat prompts with checkable answers
(loraforge.demo.prompts)."""

from loraforge.demo.prompts import write_prompts
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    run(sm.log[0], write_prompts, out=sm.output.prompts)
