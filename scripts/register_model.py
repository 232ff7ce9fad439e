"""Rule register_model: one GGUF into the registry with lineage and metrics (loraforge.registry.register)."""

from loraforge.registry.register import register_artifact
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, w, i = sm.params, sm.wildcards, sm.input
    run(
        sm.log[0],
        register_artifact,
        registry=p.registry,
        name=w.model,
        gguf=i.gguf,
        gguf_type=w.variant,
        check_json=i.check,
        merge_json=i.get("merge"),
        merged_dir=i.get("merged"),
        receipt=sm.output.receipt,
        settings=dict(p.settings),
        metrics_json=i.get("metrics"),
        store_mode=p.store_mode,
    )
