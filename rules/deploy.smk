# What users load, per adapter: Ollama Modelfiles (merged GGUF; base GGUF + LoRA GGUF) and a model card with the
# measured numbers, in results/deploy/<adapter>/.


rule deploy_bundle:
    input:
        unpack(deploy_inputs),
    output:
        bundle=directory("results/deploy/{adapter}"),
    log:
        "logs/deploy_bundle/{adapter}.log",
    conda:
        "../envs/loraforge.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        name=lambda w: gguf_metadata(w.adapter)["general.basename"],
        gguf_type=DEPLOY_TYPE,
        artifacts=lambda w: artifacts_of(w.adapter) if EVAL else [],
        base_model_id=config["deploy"]["base_model"],
        license=config["deploy"]["license"],
        quantized_by=config["deploy"]["quantized_by"],
    script:
        "../scripts/deploy_bundle.py"
