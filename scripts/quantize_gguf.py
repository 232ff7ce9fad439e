"""Rule quantize_gguf: llama.cpp quantization, load check (loraforge.quantize.quantize_artifact)."""

from loraforge.quantize import quantize_artifact
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    run(sm.log[0], quantize_artifact, threads=sm.threads,
        src_gguf=sm.input.gguf, out_gguf=sm.output.gguf, check_json=sm.output.check, qtype=sm.params.quant,
        llama_quantize=sm.params.llama_quantize)
