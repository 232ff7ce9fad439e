# adapter(s) + base -> merged HF model directory, checked against PEFT: the adapter's float32 reference, which
# this job computes beside the merge where evaluation is on (plan.reference_in_merge; else rule compute_reference).


rule merge_adapter:
    input:
        unpack(lambda w: with_external(plan.adapter_inputs(w.adapter))),
        unpack(lambda w: plan.merge_check_inputs(w.adapter)),
    output:
        **plan.merge_outputs(),
        model_dir=directory(paths.MERGED),
        check=paths.MERGE_CHECK,
    log:
        paths.log("merge_adapter", "{adapter}"),
    benchmark:
        paths.benchmark("merge_adapter", "{adapter}")
    conda:
        "../envs/loraforge.yaml"
    threads: plan.threads
    resources:
        mem_mb=lambda w, input: plan.merge_mem_mb(
            inputs_mb(input.base), inputs_mb(input)
        ),
        runtime=90,  # minutes: the reference's pass (compute_reference: 60) and the merge with its check
    params:
        weights=lambda w: plan.adapter_weights(w.adapter),
        fingerprints=input_fingerprints,
        method=config["merge"]["method"],
        shard_size_mb=config["merge"]["shard_size_mb"],
        check=config["merge"]["check"],
        max_kld=config["merge"]["max_kld"],
        check_text=config["checks"]["text"],
        budget_mb=plan.budget_mb,
        # the adapter's reference, where this job computes it (plan.reference_in_merge)
        names=list(plan.texts),
        n_ctx=config["evaluation"]["n_ctx"],
        max_tokens=config["evaluation"]["max_tokens"],
        batch=config["evaluation"]["batch"],
        version=loraforge.__version__,
    script:
        "../scripts/merge_adapter.py"
