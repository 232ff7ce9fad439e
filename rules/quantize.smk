# float GGUF -> quantized GGUF (llama.cpp), checked: loads and gives finite logits. <type>-imat GGUFs use an
# importance matrix computed by llama-imatrix on the calibration text (quantize.imatrix).
IMATRIX = plan.imatrix or {}


rule compute_imatrix:
    input:
        gguf=lambda w: plan.gguf(w.model, plan.float_type),
        text=external(IMATRIX["text"]) if IMATRIX else [],
    output:
        imatrix=paths.IMATRIX,
        check=paths.IMATRIX_CHECK,
    log:
        paths.log("compute_imatrix", "{model}"),
    benchmark:
        paths.benchmark("compute_imatrix", "{model}")
    conda:
        "../envs/loraforge.yaml"
    threads: config["quantize"]["threads"]
    resources:
        mem_mb=lambda w, input: int(1000 + 1.2 * inputs_mb(input)),
        runtime=120,
    params:
        fingerprint=fingerprint(IMATRIX.get("text")),
        n_ctx=IMATRIX.get("n_ctx"),
        chunks=IMATRIX.get("chunks"),
        llama_cpp_dir=config["llama_cpp_dir"],
        version=loraforge.__version__,
    script:
        "../scripts/compute_imatrix.py"


rule quantize_gguf:
    input:
        unpack(lambda w: plan.quantize_inputs(w.model, w.gguf_type)),
    output:
        gguf=paths.GGUF,
        check=paths.GGUF_CHECK,
    log:
        paths.log("quantize_gguf", "{model}-{gguf_type}"),
    benchmark:
        paths.benchmark("quantize_gguf", "{model}-{gguf_type}")
    wildcard_constraints:
        gguf_type=one_of(plan.quants + plan.imat_quants),
    conda:
        "../envs/loraforge.yaml"
    threads: config["quantize"]["threads"]
    resources:
        mem_mb=lambda w, input: int(1000 + 2 * inputs_mb(input)),
        runtime=60,
    params:
        llama_cpp_dir=config["llama_cpp_dir"],
        version=loraforge.__version__,
    script:
        "../scripts/quantize_gguf.py"


# merged (or compressed, or base) HF model -> 4-bit GPTQ / AWQ compressed-tensors checkpoint for vLLM (hf_quant),
# calibrated with llm-compressor on the calibration text, checked on reload.
rule quantize_hf:
    input:
        unpack(lambda w: with_external(plan.hfq_inputs(w.model))),
    output:
        checkpoint=directory(paths.HFQ),
        check=paths.HFQ_CHECK,
    log:
        paths.log("quantize_hf", "{model}-{scheme}"),
    benchmark:
        paths.benchmark("quantize_hf", "{model}-{scheme}")
    wildcard_constraints:
        model=one_of(plan.hfq_models()),
        scheme=one_of(plan.hfq_schemes),
    conda:
        "../envs/loraforge.yaml"
    threads: plan.threads
    resources:
        # the model in its 16 bits and the compressed copy it saves (1.2 GB on the demo's 260 MB model)
        mem_mb=lambda w, input: int(2000 + 2 * inputs_mb(input.model_dir)),
        runtime=240,
    params:
        samples=(plan.hfq or {}).get("samples"),
        seq_len=(plan.hfq or {}).get("seq_len"),
        group_size=(plan.hfq or {}).get("group_size"),
        fingerprint=fingerprint((plan.hfq or {}).get("text")),
        version=loraforge.__version__,
    script:
        "../scripts/quantize_hf.py"
