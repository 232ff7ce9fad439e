"""Rule compute_imatrix: llama-imatrix on the calibration text (loraforge.quantization.imatrix)."""

from loraforge.quantization.imatrix import imatrix_artifact
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    run(
        sm.log[0],
        imatrix_artifact,
        threads=sm.threads,
        gguf=sm.input.gguf,
        text=sm.input.text,
        out=sm.output.imatrix,
        check_json=sm.output.check,
        n_ctx=sm.params.n_ctx,
        chunks=sm.params.chunks,
        llama_cpp_dir=sm.params.llama_cpp_dir,
    )
