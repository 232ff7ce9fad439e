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


rule split_gguf:
    input:
        gguf=GGUF,
        check=f"{GGUF}.json",
    output:
        split=directory("results/split/{adapter}/{adapter}-{gguf_type}"),
        check="results/split/{adapter}/{adapter}-{gguf_type}.json",
    log:
        "logs/split_gguf/{adapter}-{gguf_type}.log",
    wildcard_constraints:
        adapter="|".join(re.escape(m) for m in EVALUATED),
    conda:
        "../envs/loraforge.yaml"
    threads: THREADS
    resources:
        mem_mb=lambda w, input: int(1000 + 0.2 * input.size_mb),
        runtime=60,
    params:
        max_size=SPLIT,
        llama_cpp_dir=config["llama_cpp_dir"],
    script:
        "../scripts/split_gguf.py"
