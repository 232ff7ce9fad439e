# adapter(s) + base -> merged HF model directory, checked against PEFT.


rule merge_adapter:
    input:
        unpack(merge_inputs),
    output:
        model_dir=directory("results/merged/{adapter}"),
        check="results/checks/merge/{adapter}.json",
    log:
        "logs/merge_adapter/{adapter}.log",
    benchmark:
        "benchmarks/merge_adapter/{adapter}.tsv"
    conda:
        "../envs/loraforge.yaml"
    threads: THREADS
    resources:
        # streaming: largest tensor + constant; the PEFT check (and method peft) holds the model twice
        mem_mb=lambda w, input: (
            bounded_mem_mb(1500 + 3 * dir_size_mb(input.base))
            if config["merge"]["check"] and config["merge"]["method"] != "peft"
            else int(
                1500
                + (3 if config["merge"]["method"] == "peft" else 0.2)
                * dir_size_mb(input.base)
            )
        ),
        runtime=60,
    params:
        weights=adapter_weights,
        fingerprints=input_fingerprints,
        method=config["merge"]["method"],
        shard_size_mb=config["merge"]["shard_size_mb"],
        check=config["merge"]["check"],
        max_kld=config["merge"]["max_kld"],
        check_text=config["checks"]["text"],
        budget_mb=BUDGET_MB,
        version=loraforge.__version__,
    script:
        "../scripts/merge_adapter.py"
