"""Rule import_demo_base: the demo GGUF as an HF base model directory (loraforge.demo.import_base)."""

from loraforge.demo import import_base
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    run(sm.log[0], import_base, threads=sm.threads, gguf=sm.input.gguf, out_dir=sm.output.model_dir)
