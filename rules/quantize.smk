# float GGUF -> quantized GGUF (llama.cpp), checked: loads and gives finite logits. <type>-imat GGUFs use an
# importance matrix computed by llama-imatrix on the calibration text (quantize.imatrix).


rule compute_imatrix:
    input:
        gguf=lambda w: gguf_of(w.adapter, FLOAT),
        text=external(IMATRIX["text"]) if IMATRIX else [],
    output:
        imatrix=IMATRIX_FILE,
        check=f"{IMATRIX_FILE}.json",
    log:
        "logs/compute_imatrix/{adapter}.log",
    benchmark:
        "benchmarks/compute_imatrix/{adapter}.tsv"
    wildcard_constraints:
        adapter="|".join(re.escape(m) for m in MODELS),
    conda:
        "../envs/loraforge.yaml"
    threads: config["quantize"]["threads"]
    resources:
        mem_mb=lambda w, input: int(1000 + 1.2 * input.size_mb),
        runtime=120,
    params:
        fingerprint=fingerprint(IMATRIX["text"]) if IMATRIX else None,
        n_ctx=(IMATRIX or {}).get("n_ctx", 512),
        chunks=(IMATRIX or {}).get("chunks", 100),
        llama_cpp_dir=config["llama_cpp_dir"],
        version=loraforge.__version__,
    script:
        "../scripts/compute_imatrix.py"


rule quantize_gguf:
    input:
        unpack(quantize_inputs),
    output:
        gguf=GGUF,
        check=f"{GGUF}.json",
    log:
        "logs/quantize_gguf/{adapter}-{gguf_type}.log",
    benchmark:
        "benchmarks/quantize_gguf/{adapter}-{gguf_type}.tsv"
    wildcard_constraints:
        gguf_type="|".join(re.escape(t) for t in QUANTS + IMAT_QUANTS),
        adapter="|".join(re.escape(m) for m in MODELS),
    conda:
        "../envs/loraforge.yaml"
    threads: config["quantize"]["threads"]
    resources:
        mem_mb=lambda w, input: int(1000 + 2 * input.size_mb),
        runtime=60,
    params:
        qtype=lambda w: w.gguf_type.removesuffix("-imat"),
        llama_cpp_dir=config["llama_cpp_dir"],
        version=loraforge.__version__,
    script:
        "../scripts/quantize_gguf.py"
