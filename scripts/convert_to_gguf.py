"""Rule convert_to_gguf: llama.cpp conversion, checked against HF logits or their stored reference
(loraforge.conversion.convert_artifact)."""

from loraforge.conversion import convert_artifact
from loraforge.io.hashing import WORKFLOW_HASH_CACHE
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p = sm.params
    run(
        sm.log[0],
        convert_artifact,
        threads=sm.threads,
        model_dir=sm.input.model_dir,
        out_gguf=sm.output.gguf,
        check_json=sm.output.check,
        outtype=p.outtype,
        check=p.check,
        min_top1=p.min_top1,
        max_abs_logit_diff=p.max_abs_logit_diff,
        check_text=p.check_text,
        llama_cpp_dir=p.llama_cpp_dir,
        metadata=dict(p.metadata),
        budget_mb=p.budget_mb,
        reference=sm.input.get("reference"),
        evaluation_reference=sm.input.get("evaluation_reference"),
        # an adapter's merged model, scored beside the converter for its evaluation (Plan.merged_scored_in_conversion)
        score_merged={"label": f"{sm.wildcards.model}/merged", "batch": p.batch} if p.score_merged else None,
        hash_cache=WORKFLOW_HASH_CACHE,  # the evaluation and registration after it need not hash the GGUF again
    )
