"""Rule split_gguf: a GGUF as llama.cpp's split set (loraforge.quantization.split)."""

from loraforge.quantization.split import split_gguf
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    run(
        sm.log[0],
        split_gguf,
        threads=sm.threads,
        gguf=sm.input.gguf,
        out_dir=sm.output.split,
        check_json=sm.output.check,
        max_size=sm.params.max_size,
        llama_cpp_dir=sm.params.llama_cpp_dir,
    )
