"""Rule merge_adapter: the adapter's float32 reference where evaluation is on, then merge, check against it (else
against PEFT run here), publish (loraforge.merging.merge_artifact)."""

from loraforge.merging import merge_artifact
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p = sm.params
    adapters = [{"path": a, "weight": w} for a, w in zip(sm.input.adapters, p.weights, strict=True)]
    run(
        sm.log[0],
        merge_artifact,
        threads=sm.threads,
        base_dir=sm.input.base,
        adapters=adapters,
        out_dir=sm.output.model_dir,
        check_json=sm.output.check,
        method=p.method,
        shard_size_mb=p.shard_size_mb,
        check=p.check,
        check_text=p.check_text,
        max_kld=dict(p.max_kld),
        budget_mb=p.budget_mb,
        reference=sm.input.get("reference"),
        window_out=sm.output.get("window"),
        # the adapter's reference, where this job computes it, beside the merge (Plan.reference_in_merge)
        reference_out=sm.output.get("reference"),
        texts=dict(zip(p.names, sm.input.texts, strict=True)) if sm.output.get("reference") else None,
        n_ctx=p.n_ctx,
        max_tokens=p.max_tokens,
        batch=p.batch,
    )
