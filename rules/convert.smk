# merged HF model (or the base itself, for the LoRA form) -> float GGUF (llama.cpp's own converter), checked
# against the HF model's logits; each adapter -> a LoRA GGUF (llama.cpp's convert_lora_to_gguf.py), checked
# against the merged model's GGUF.


rule convert_to_gguf:
    input:
        model_dir=convert_source,
    output:
        gguf=GGUF,
        check=f"{GGUF}.json",
    log:
        "logs/convert_to_gguf/{adapter}-{gguf_type}.log",
    benchmark:
        "benchmarks/convert_to_gguf/{adapter}-{gguf_type}.tsv"
    wildcard_constraints:
        gguf_type=FLOAT,
        adapter="|".join(re.escape(m) for m in MODELS),
    conda:
        "../envs/loraforge.yaml"
    threads: THREADS
    resources:
        # lazy converter + the HF model in float32 for the logit check
        mem_mb=lambda w, input: bounded_mem_mb(1500 + 3 * dir_size_mb(input.model_dir)),
        runtime=60,
    params:
        outtype=config["convert"]["outtype"],
        check=config["convert"]["check"],
        min_top1=config["convert"]["min_top1"],
        max_abs_logit_diff=config["convert"]["max_abs_logit_diff"],
        check_text=config["checks"]["text"],
        budget_mb=BUDGET_MB,
        llama_cpp_dir=config["llama_cpp_dir"],
        metadata=lambda w: gguf_metadata(w.adapter),
        fingerprint=lambda w: fingerprint(BASE) if w.adapter == "base" else None,
        version=loraforge.__version__,
    script:
        "../scripts/convert_to_gguf.py"


rule convert_lora:
    input:
        adapter=lambda w: external(adapter_specs(w.adapter)[0]["path"]),
        base=external(BASE),
        base_gguf=gguf_of("base", FLOAT),
        merged_gguf=lambda w: gguf_of(w.adapter, FLOAT),
    output:
        gguf=LORA_GGUF,
        check=f"{LORA_GGUF}.json",
    log:
        "logs/convert_lora/{adapter}.log",
    benchmark:
        "benchmarks/convert_lora/{adapter}.tsv"
    conda:
        "../envs/loraforge.yaml"
    threads: THREADS
    resources:
        mem_mb=lambda w, input: int(1500 + 2 * input.size_mb),
        runtime=30,
    params:
        fingerprints=input_fingerprints,
        weight=lambda w: adapter_specs(w.adapter)[0]["weight"],
        outtype=config["lora"]["outtype"],
        max_kld=config["lora"]["max_kld"],
        llama_cpp_dir=config["llama_cpp_dir"],
        version=loraforge.__version__,
    script:
        "../scripts/convert_lora.py"
