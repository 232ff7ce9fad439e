# adapter(s) + base -> merged HF model directory, checked against PEFT.


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
        mem_mb=lambda w, input: plan.merge_mem_mb(inputs_mb(input.base)),
        runtime=60,
    params:
        weights=lambda w: plan.adapter_weights(w.adapter),
        fingerprints=input_fingerprints,
        method=config["merge"]["method"],
        shard_size_mb=config["merge"]["shard_size_mb"],
        check=config["merge"]["check"],
        max_kld=config["merge"]["max_kld"],
        check_text=config["checks"]["text"],
        budget_mb=plan.budget_mb,
        version=loraforge.__version__,
    script:
        "../scripts/merge_adapter.py"
