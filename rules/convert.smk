# merged HF model (or the base itself, for the LoRA form) -> float GGUF (llama.cpp's own converter), checked
# against the HF model's logits; each adapter -> a LoRA GGUF (llama.cpp's convert_lora_to_gguf.py), checked with
# the base's float GGUF against the adapter applied through PEFT in float32 (a LoRA-only revision: its reference).


rule convert_to_gguf:
    input:
        unpack(lambda w: with_external(plan.convert_inputs(w.model))),
    output:
        # the float type is part of the pattern: quantize_gguf's outputs never match it
        gguf=paths.fill(paths.GGUF, gguf_type=plan.float_type),
        check=paths.fill(paths.GGUF_CHECK, gguf_type=plan.float_type),
    log:
        paths.log("convert_to_gguf", f"{{model}}-{plan.float_type}"),
    benchmark:
        paths.benchmark("convert_to_gguf", f"{{model}}-{plan.float_type}")
    conda:
        "../envs/loraforge.yaml"
    threads: plan.threads
    resources:
        # lazy converter + the HF model in float32 for the logit check (+ the merged model's scoring beside it)
        mem_mb=lambda w, input: plan.convert_mem_mb(w.model, inputs_mb(input.model_dir)),
        runtime=60,
    params:
        outtype=config["convert"]["outtype"],
        check=config["convert"]["check"],
        min_top1=config["convert"]["min_top1"],
        max_abs_logit_diff=config["convert"]["max_abs_logit_diff"],
        check_text=config["checks"]["text"],
        budget_mb=plan.budget_mb,
        # an adapter's merged model scored beside the converter (plan.merged_scored_in_conversion)
        score_merged=plan.merged_scored_in_conversion,
        batch=config["evaluation"]["batch"],
        llama_cpp_dir=config["llama_cpp_dir"],
        metadata=lambda w: plan.gguf_metadata(w.model),
        fingerprint=lambda w: fingerprint(plan.base) if w.model == "base" else None,
        version=loraforge.__version__,
    script:
        "../scripts/convert_to_gguf.py"


rule convert_lora:
    input:
        unpack(lambda w: plan.lora_check_inputs(w.adapter)),
        adapter=lambda w: external(plan.adapter_specs(w.adapter)[0]["path"]),
        base=external(plan.base),
        base_gguf=plan.gguf("base", plan.float_type),
    output:
        gguf=plan.lora_gguf,
        check=f"{plan.lora_gguf}.json",
    log:
        paths.log("convert_lora", "{adapter}"),
    benchmark:
        paths.benchmark("convert_lora", "{adapter}")
    conda:
        "../envs/loraforge.yaml"
    threads: plan.threads
    resources:
        mem_mb=lambda w, input: plan.bounded_mem_mb(2000 + 3 * inputs_mb(input.base)),
        runtime=30,
    params:
        fingerprints=input_fingerprints,
        budget_mb=plan.budget_mb,
        weight=lambda w: plan.adapter_specs(w.adapter)[0]["weight"],
        outtype=config["lora"]["outtype"],
        max_kld=config["lora"]["max_kld"],
        llama_cpp_dir=config["llama_cpp_dir"],
        version=loraforge.__version__,
    script:
        "../scripts/convert_lora.py"
