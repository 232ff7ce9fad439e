# float GGUF -> quantized GGUF (llama.cpp), checked: loads and gives finite logits.


rule quantize_gguf:
    input:
        gguf=rules.convert_to_gguf.output.gguf,
    output:
        gguf="results/gguf/{adapter}/{adapter}-{quant}.gguf",
        check="results/gguf/{adapter}/{adapter}-{quant}.gguf.json",
    params:
        quant="{quant}",
        llama_quantize=config["quantize"]["llama_quantize"],
        version=loraforge.__version__,
    log:
        "logs/quantize_gguf/{adapter}-{quant}.log",
    benchmark:
        "benchmarks/quantize_gguf/{adapter}-{quant}.tsv"
    threads: config["quantize"]["threads"]
    resources:
        mem_mb=lambda w, input: int(1000 + 2 * input.size_mb),
        runtime=60,
    conda:
        "../envs/loraforge.yaml"
    script:
        "../scripts/quantize_gguf.py"
