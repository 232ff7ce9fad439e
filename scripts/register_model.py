"""Rule register_model: one artifact into the registry with lineage and metrics (loraforge.registry.register): a
LoRA-only revision's LoRA GGUF, or a GPU-serving checkpoint / vLLM multi-LoRA adapter."""

from loraforge.registry.register import register_artifact, register_checkpoint
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, w, i = sm.params, sm.wildcards, sm.input
    common = dict(
        registry=p.registry,
        name=w.model,
        check_json=i.check,
        merge_json=i.get("merge"),
        merged_dir=i.get("merged"),
        receipt=sm.output.receipt,
        settings=dict(p.settings),
        artifact_settings=dict(p.artifact_settings),
        merged_settings=dict(p.merged_settings),
        metrics_json=i.get("metrics"),
        store_mode=p.store_mode,
    )
    if "checkpoint" in i.keys():
        adapters = list(i.adapters) if "adapters" in i.keys() else None
        run(
            sm.log[0],
            register_checkpoint,
            variant=w.variant,
            checkpoint=i.checkpoint,
            base_dir=i.get("base"),
            adapter_dirs=adapters,
            weights=list(p.weights) if adapters else None,
            **common,
        )
    else:
        lora_metrics = list(i.lora_metrics) if "lora_metrics" in i.keys() else None
        run(sm.log[0], register_artifact, gguf=i.gguf, gguf_type=w.variant, lora_metrics_json=lora_metrics, **common)
