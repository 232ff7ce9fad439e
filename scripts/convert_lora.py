"""Rule convert_lora: the adapter as a LoRA GGUF, checked against the adapter applied through PEFT
(loraforge.conversion.lora)."""

from loraforge.conversion.lora import lora_artifact
from loraforge.io.hashing import WORKFLOW_HASH_CACHE
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    i, p = sm.input, sm.params
    run(
        sm.log[0],
        lora_artifact,
        threads=sm.threads,
        adapter_dir=i.adapter,
        base_dir=i.base,
        out_gguf=sm.output.gguf,
        check_json=sm.output.check,
        base_gguf=i.base_gguf,
        outtype=p.outtype,
        weight=p.weight,
        max_kld=p.max_kld,
        llama_cpp_dir=p.llama_cpp_dir,
        budget_mb=p.budget_mb,
        reference=i.get("reference"),
        hash_cache=WORKFLOW_HASH_CACHE,  # the evaluation and registration after it need not hash the GGUF again
    )
