# What users load, per adapter: Ollama Modelfiles (merged GGUF; base GGUF + LoRA GGUF) and a model card with the
# measured numbers, in results/deploy/<adapter>/; optionally every GGUF as llama.cpp's split set.


rule deploy_bundle:
    input:
        unpack(lambda w: with_external(plan.deploy_inputs(w.adapter))),
    output:
        bundle=directory(paths.DEPLOY),
    log:
        paths.log("deploy_bundle", "{adapter}"),
    conda:
        "../envs/loraforge.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        name=lambda w: plan.gguf_metadata(w.adapter)["general.basename"],
        gguf_type=plan.deploy_type,
        artifacts=lambda w: plan.artifacts_of(w.adapter) if plan.evaluate else [],
        base_model_id=config["deploy"]["base_model"],
        license=config["deploy"]["license"],
        quantized_by=config["deploy"]["quantized_by"],
    script:
        "../scripts/deploy_bundle.py"


rule split_gguf:
    input:
        gguf=paths.GGUF,
        check=paths.GGUF_CHECK,
    output:
        split=directory(paths.SPLIT),
        check=paths.SPLIT_CHECK,
    log:
        paths.log("split_gguf", "{model}-{gguf_type}"),
    wildcard_constraints:
        model=one_of(plan.evaluated),
    conda:
        "../envs/loraforge.yaml"
    threads: plan.threads
    resources:
        mem_mb=lambda w, input: int(1000 + 0.2 * inputs_mb(input.gguf)),
        runtime=60,
    params:
        max_size=plan.split,
        llama_cpp_dir=config["llama_cpp_dir"],
    script:
        "../scripts/split_gguf.py"
