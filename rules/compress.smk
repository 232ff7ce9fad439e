# Compression beyond quantization: <adapter>-<spec> is the merged model without its least important decoder
# layers and/or MLP channels (results/pruned), optionally distilled from the merged model (results/distilled);
# convert, quantize, evaluate and register treat it like an adapter's merged model.
COMPRESS = plan.compress or {}


rule prune_model:
    input:
        teacher=lambda w: plan.model_dir(plan.teacher(w.model)),
        text=external(COMPRESS["text"]) if COMPRESS else [],
    output:
        model_dir=directory(paths.PRUNED),
        scores=paths.PRUNE_SCORES,
    log:
        paths.log("prune_model", "{model}"),
    benchmark:
        paths.benchmark("prune_model", "{model}")
    wildcard_constraints:
        model=one_of(plan.compressed),
    conda:
        "../envs/loraforge.yaml"
    threads: plan.threads
    resources:
        mem_mb=lambda w, input: int(2000 + 4 * inputs_mb(input.teacher)),
        runtime=60,
    params:
        spec=lambda w: plan.compress_spec(w.model),
        fingerprint=fingerprint(COMPRESS.get("text")),
        n_ctx=COMPRESS.get("n_ctx"),
        max_tokens=COMPRESS.get("max_tokens"),
        row_multiple=plan.row_multiple,
        version=loraforge.__version__,
    script:
        "../scripts/prune_model.py"


rule distill_model:
    input:
        teacher=lambda w: plan.model_dir(plan.teacher(w.model)),
        student=rules.prune_model.output.model_dir,
        text=external(COMPRESS["text"]) if COMPRESS else [],
    output:
        model_dir=directory(paths.DISTILLED),
        curve=paths.DISTILL_CURVE,
    log:
        paths.log("distill_model", "{model}"),
    benchmark:
        paths.benchmark("distill_model", "{model}")
    wildcard_constraints:
        model=one_of(plan.compressed),
    conda:
        "../envs/loraforge.yaml"
    threads: plan.threads
    resources:
        # teacher and student in float32, the student's gradients and AdamW's two moments
        mem_mb=lambda w, input: int(3000 + 12 * inputs_mb(input.teacher)),
        runtime=240,
    params:
        distill=lambda w: plan.compress_spec(w.model)["distill"],
        fingerprint=fingerprint(COMPRESS.get("text")),
        n_ctx=COMPRESS.get("n_ctx"),
        version=loraforge.__version__,
    script:
        "../scripts/distill_model.py"
