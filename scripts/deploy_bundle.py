"""Rule deploy_bundle: Ollama Modelfiles and a model card for one adapter (loraforge.deploy)."""

from loraforge.deploy import deploy_bundle
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    i, p = sm.input, sm.params
    run(
        sm.log[0],
        deploy_bundle,
        out_dir=sm.output.bundle,
        adapter=sm.wildcards.adapter,
        name=p.name,
        gguf_type=p.gguf_type,
        merged_gguf=i.get("merged_gguf"),
        merged_dir=i.get("merged"),
        base_dir=i.base,
        adapter_dirs=list(i.adapters),
        base_gguf=i.get("base_gguf"),
        lora_gguf=i.get("lora_gguf"),
        metrics=dict(zip(p.artifacts, i.get("metrics", []), strict=True)),
        base_metrics=i.get("base_metrics"),
        base_model_id=p.base_model_id,
        license_=p.license,
        quantized_by=p.quantized_by,
        splits=i.get("splits"),
        checkpoints=i.get("checkpoints"),
        base_checkpoints=i.get("base_checkpoints"),
    )
