# merged HF model -> float GGUF (llama.cpp's own converter), checked against the HF model's logits.


rule convert_to_gguf:
    input:
        model_dir=rules.merge_adapter.output.model_dir,
    output:
        gguf=GGUF,
        check=f"{GGUF}.json",
    log:
        "logs/convert_to_gguf/{adapter}-{gguf_type}.log",
    benchmark:
        "benchmarks/convert_to_gguf/{adapter}-{gguf_type}.tsv"
    wildcard_constraints:
        gguf_type=FLOAT,
    conda:
        "../envs/loraforge.yaml"
    threads: THREADS
    resources:
        # lazy converter + the HF model in float32 for the logit check
        mem_mb=lambda w, input: int(1500 + 3 * dir_size_mb(input.model_dir)),
        runtime=60,
    params:
        outtype=config["convert"]["outtype"],
        check=config["convert"]["check"],
        min_top1=config["convert"]["min_top1"],
        max_abs_logit_diff=config["convert"]["max_abs_logit_diff"],
        check_text=config["checks"]["text"],
        llama_cpp_dir=config["llama_cpp_dir"],
        version=loraforge.__version__,
    script:
        "../scripts/convert_to_gguf.py"
