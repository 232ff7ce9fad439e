# Measured quality: reference log-probs once per adapter, then PPL / KLD / top-1 for every artifact.


rule compute_reference:
    input:
        model_dir=rules.merge_adapter.output.model_dir,
        texts=eval_texts(),
    output:
        reference="results/eval/{adapter}/reference.safetensors",
    log:
        "logs/compute_reference/{adapter}.log",
    benchmark:
        "benchmarks/compute_reference/{adapter}.tsv"
    conda:
        "../envs/loraforge.yaml"
    threads: THREADS
    resources:
        mem_mb=lambda w, input: bounded_mem_mb(2000 + 3 * dir_size_mb(input.model_dir)),
        runtime=60,
    params:
        names=list(config["evaluation"]["texts"]),
        n_ctx=config["evaluation"]["n_ctx"],
        max_tokens=config["evaluation"]["max_tokens"],
        batch=config["evaluation"]["batch"],
        budget_mb=BUDGET_MB,
    script:
        "../scripts/compute_reference.py"


rule evaluate_artifact:
    input:
        unpack(evaluation_inputs),
        # a compressed model is scored against the model it was compressed from
        reference=lambda w: expand(
            rules.compute_reference.output.reference, adapter=teacher(w.adapter)
        ),
    output:
        metrics="results/eval/{adapter}/{artifact}.json",
    log:
        "logs/evaluate_artifact/{adapter}-{artifact}.log",
    benchmark:
        "benchmarks/evaluate_artifact/{adapter}-{artifact}.tsv"
    wildcard_constraints:
        adapter="|".join(re.escape(m) for m in EVALUATED),
    conda:
        "../envs/loraforge.yaml"
    threads: THREADS
    resources:
        mem_mb=lambda w, input: (
            bounded_mem_mb(2000 + 3 * input.size_mb)
            if artifact_kind(w.artifact) in ("hf", "peft")
            else int(2000 + 3 * input.size_mb)
        ),
        runtime=60,
    params:
        kind=lambda w: artifact_kind(w.artifact),
        weights=adapter_weights,
        gates=lambda w: config["evaluation"]["gates"].get(w.artifact, {}),
        batch=config["evaluation"]["batch"],
        budget_mb=BUDGET_MB,
    script:
        "../scripts/evaluate_artifact.py"


rule evaluate_base:
    input:
        base=external(BASE),
        texts=eval_texts(),
    output:
        metrics="results/base/eval.json",
    log:
        "logs/evaluate_base/base.log",
    benchmark:
        "benchmarks/evaluate_base/base.tsv"
    conda:
        "../envs/loraforge.yaml"
    threads: THREADS
    resources:
        mem_mb=lambda w, input: bounded_mem_mb(2000 + 2 * input.size_mb),
        runtime=60,
    params:
        names=list(config["evaluation"]["texts"]),
        n_ctx=config["evaluation"]["n_ctx"],
        max_tokens=config["evaluation"]["max_tokens"],
        batch=config["evaluation"]["batch"],
        budget_mb=BUDGET_MB,
    script:
        "../scripts/evaluate_base.py"


rule report_quality:
    input:
        base=rules.evaluate_base.output.metrics,
        metrics=[
            m
            for a in EVALUATED
            for m in expand(
                rules.evaluate_artifact.output.metrics,
                adapter=a,
                artifact=artifacts_of(a),
            )
        ],
    output:
        table=report(
            "results/report/metrics.html",
            caption="../report/metrics.rst",
            category="Quality",
            labels={"figure": "all artifacts x metrics"},
        ),
        tsv="results/report/metrics.tsv",
        size_kld=report(
            "results/report/size_vs_kld.svg",
            caption="../report/size_vs_kld.rst",
            category="Quality",
            labels={"figure": "size vs mean KLD"},
        ),
        ppl=report(
            "results/report/ppl_by_domain.svg",
            caption="../report/ppl_by_domain.rst",
            category="Quality",
            labels={"figure": "perplexity per text"},
        ),
    log:
        "logs/report_quality/report.log",
    conda:
        "../envs/loraforge.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        # Snakemake's benchmark records of the jobs behind each artifact: read, not inputs (they are not outputs)
        build_benchmarks={
            f"{a}/{art}": build_benchmarks(a, art)
            for a in EVALUATED
            for art in artifacts_of(a)
        },
    script:
        "../scripts/report_quality.py"
