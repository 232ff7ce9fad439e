# float GGUF -> quantized GGUF (llama.cpp), checked: loads and gives finite logits.


rule quantize_gguf:
    input:
        gguf=lambda w: gguf_of(w.adapter, FLOAT),
    output:
        gguf=GGUF,
        check=f"{GGUF}.json",
    log:
        "logs/quantize_gguf/{adapter}-{gguf_type}.log",
    benchmark:
        "benchmarks/quantize_gguf/{adapter}-{gguf_type}.tsv"
    wildcard_constraints:
        gguf_type="|".join(QUANTS),
    conda:
        "../envs/loraforge.yaml"
    threads: config["quantize"]["threads"]
    resources:
        mem_mb=lambda w, input: int(1000 + 2 * input.size_mb),
        runtime=60,
    params:
        llama_cpp_dir=config["llama_cpp_dir"],
        version=loraforge.__version__,
    script:
        "../scripts/quantize_gguf.py"
