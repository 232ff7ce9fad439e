"""Rule register_ggufs: every GGUF of one model's revision into the registry, with lineage and metrics
(loraforge.registry.register.register_ggufs)."""

from loraforge.registry.register import register_ggufs
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, w, i = sm.params, sm.wildcards, sm.input
    run(
        sm.log[0],
        register_ggufs,
        registry=p.registry,
        name=w.model,
        ggufs=list(i.ggufs),
        gguf_types=list(p.types),
        check_jsons=list(i.checks),
        receipts=list(sm.output.receipts),
        metrics_jsons=dict(zip(p.measured, i.metrics, strict=True)) if p.measured else None,
        merge_json=i.get("merge"),
        merged_dir=i.get("merged"),
        settings=dict(p.settings),
        artifact_settings={t: dict(s) for t, s in p.artifact_settings.items()},
        merged_settings=dict(p.merged_settings),
        store_mode=p.store_mode,
    )
