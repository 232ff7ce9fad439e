"""Rule register_model: one GGUF into the registry with lineage and metrics (loraforge.registry)."""

from loraforge.registry import register_artifact
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, w = sm.params, sm.wildcards
    run(sm.log[0], register_artifact, registry=p.registry, name=w.adapter, gguf=sm.input.gguf,
        quant_type=w.gguf_type, check_json=sm.input.check, receipt=sm.output.receipt, base_dir=p.base_dir,
        adapters=list(p.adapters), settings=dict(p.settings), metrics_json=sm.input.get("metrics"),
        hash_cache=".snakemake/loraforge/hashes.json")
