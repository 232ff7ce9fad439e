"""Rule write_demo_texts: the demo's held-out evaluation texts (loraforge.demo.write_texts)."""

from pathlib import Path

from loraforge.demo import write_texts
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    run(sm.log[0], write_texts, out_dir=Path(sm.output.code).parent)
