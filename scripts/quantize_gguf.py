"""Rule quantize_gguf: llama.cpp quantization, load check (loraforge.quantization.quantize_artifact)."""

from loraforge.io.hashing import WORKFLOW_HASH_CACHE
from loraforge.quantization import quantize_artifact
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    run(
        sm.log[0],
        quantize_artifact,
        threads=sm.threads,
        src_gguf=sm.input.gguf,
        out_gguf=sm.output.gguf,
        check_json=sm.output.check,
        qtype=sm.wildcards.gguf_type.removesuffix("-imat"),  # <type>-imat: <type> with the importance matrix
        imatrix=sm.input.get("imatrix"),
        llama_cpp_dir=sm.params.llama_cpp_dir,
        reference=sm.input.get("reference"),
        evaluation_reference=sm.input.get("evaluation_reference"),
        hash_cache=WORKFLOW_HASH_CACHE,  # the evaluation and registration after it need not hash the GGUF again
    )
