# Compression beyond quantization: <adapter>-<spec> is the merged model without its least important decoder
# layers and/or MLP channels (results/pruned), optionally distilled from the merged model (results/distilled);
# convert, quantize, evaluate and register treat it like an adapter's merged model.


rule prune_model:
    input:
        teacher=lambda w: model_dir(teacher(w.model)),
        text=external(COMPRESS["text"]) if COMPRESS else [],
    output:
        model_dir=directory("results/pruned/{model}"),
        scores="results/pruned/{model}.json",
    log:
        "logs/prune_model/{model}.log",
    benchmark:
        "benchmarks/prune_model/{model}.tsv"
    wildcard_constraints:
        model="|".join(re.escape(m) for m in COMPRESSED) or "^$",
    conda:
        "../envs/loraforge.yaml"
    threads: THREADS
    resources:
        mem_mb=lambda w, input: int(2000 + 4 * dir_size_mb(input.teacher)),
        runtime=60,
    params:
        spec=lambda w: compress_spec(w.model),
        fingerprint=fingerprint(COMPRESS["text"]) if COMPRESS else None,
        n_ctx=(COMPRESS or {}).get("n_ctx", 256),
        max_tokens=(COMPRESS or {}).get("max_tokens", 4096),
        row_multiple=ROW_MULTIPLE,
        version=loraforge.__version__,
    script:
        "../scripts/prune_model.py"


rule distill_model:
    input:
        teacher=lambda w: model_dir(teacher(w.model)),
        student=rules.prune_model.output.model_dir,
        text=external(COMPRESS["text"]) if COMPRESS else [],
    output:
        model_dir=directory("results/distilled/{model}"),
        curve="results/distilled/{model}.json",
    log:
        "logs/distill_model/{model}.log",
    benchmark:
        "benchmarks/distill_model/{model}.tsv"
    wildcard_constraints:
        model="|".join(re.escape(m) for m in COMPRESSED) or "^$",
    conda:
        "../envs/loraforge.yaml"
    threads: THREADS
    resources:
        # teacher and student in float32, the student's gradients and AdamW's two moments
        mem_mb=lambda w, input: int(3000 + 12 * dir_size_mb(input.teacher)),
        runtime=240,
    params:
        distill=lambda w: compress_spec(w.model)["distill"],
        fingerprint=fingerprint(COMPRESS["text"]) if COMPRESS else None,
        n_ctx=(COMPRESS or {}).get("n_ctx", 256),
        version=loraforge.__version__,
    script:
        "../scripts/distill_model.py"
