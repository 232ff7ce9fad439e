"""Rules register_ggufs and register_ggufs_lora: every GGUF of one model's revision into the registry, with lineage
and metrics, and (register_ggufs_lora) the adapter's LoRA GGUF after them (loraforge.registry.register.register_ggufs).
"""

from loraforge.registry.register import register_ggufs
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, w, i = sm.params, sm.wildcards, sm.input
    types, receipts = list(p.variants), list(sm.output.receipts)
    lora = None
    if "lora_gguf" in i.keys():  # the last variant, the last receipt
        lora_type = types.pop()
        lora = dict(
            gguf=i.lora_gguf,
            gguf_type=lora_type,
            check_json=i.lora_check,
            receipt=receipts.pop(),
            artifact_settings=dict(p.artifact_settings[lora_type]),
            lora_metrics_json=list(i.lora_metrics) if "lora_metrics" in i.keys() else None,
        )
    run(
        sm.log[0],
        register_ggufs,
        registry=p.registry,
        name=w.model,
        ggufs=list(i.ggufs),
        gguf_types=types,
        check_jsons=list(i.checks),
        receipts=receipts,
        metrics_jsons=dict(zip(p.measured, i.metrics, strict=True)) if p.measured else None,
        merge_json=i.get("merge"),
        merged_dir=i.get("merged"),
        settings=dict(p.settings),
        artifact_settings={t: dict(s) for t, s in p.artifact_settings.items()},
        merged_settings=dict(p.merged_settings),
        store_mode=p.store_mode,
        lora=lora,
    )
