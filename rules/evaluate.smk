# Measured quality: reference log-probs once per adapter, then PPL / KLD / top-1 for every artifact.


# An adapter's reference where its merge job does not compute it (plan.reference_in_merge): a LoRA-only
# revision, a merge without its check.
if not plan.reference_in_merge:

    rule compute_reference:
        input:
            unpack(lambda w: with_external(plan.reference_inputs(w.adapter))),
            texts=list(plan.texts.values()),
        output:
            reference=paths.REFERENCE,
        log:
            paths.log("compute_reference", "{adapter}"),
        benchmark:
            paths.benchmark("compute_reference", "{adapter}")
        conda:
            "../envs/loraforge.yaml"
        threads: plan.threads
        resources:
            mem_mb=lambda w, input: plan.bounded_mem_mb(2000 + 3 * inputs_mb(input)),
            runtime=60,
        params:
            weights=lambda w: plan.adapter_weights(w.adapter),
            fingerprints=input_fingerprints,
            names=list(plan.texts),
            n_ctx=config["evaluation"]["n_ctx"],
            max_tokens=config["evaluation"]["max_tokens"],
            batch=config["evaluation"]["batch"],
            budget_mb=plan.budget_mb,
        script:
            "../scripts/compute_reference.py"


rule reference_answers:
    input:
        unpack(lambda w: with_external(plan.adapter_inputs(w.adapter))),
        prompts=plan.prompts or [],
    output:
        answers=paths.ANSWERS,
    log:
        paths.log("reference_answers", "{adapter}"),
    benchmark:
        paths.benchmark("reference_answers", "{adapter}")
    conda:
        "../envs/loraforge.yaml"
    threads: plan.threads
    resources:
        mem_mb=lambda w, input: int(2000 + 3 * inputs_mb(input)),
        runtime=60,
    params:
        weights=lambda w: plan.adapter_weights(w.adapter),
        fingerprints=input_fingerprints,
        max_tokens=config["evaluation"]["answer_tokens"],
        budget_mb=plan.budget_mb,
    script:
        "../scripts/reference_answers.py"


rule evaluate_artifact:
    input:
        unpack(lambda w: with_external(plan.evaluation_inputs(w.model, w.artifact))),
    output:
        metrics=paths.METRICS,
    log:
        paths.log("evaluate_artifact", "{model}-{artifact}"),
    benchmark:
        paths.benchmark("evaluate_artifact", "{model}-{artifact}")
    wildcard_constraints:
        model=one_of(plan.evaluated),
        artifact=one_of([a for a in plan.artifacts if a not in plan.in_turn_all()]),
    conda:
        "../envs/loraforge.yaml"
    threads: plan.threads
    resources:
        mem_mb=lambda w, input: plan.evaluation_mem_mb(
            w.model, w.artifact, inputs_mb(input)
        ),
        runtime=60,
    params:
        kind=lambda w: plan.artifact_kind(w.artifact),
        weights=lambda w: plan.adapter_weights(w.model),
        gates=lambda w: config["evaluation"]["gates"].get(w.artifact, {}),
        batch=config["evaluation"]["batch"],
        budget_mb=plan.budget_mb,
        vllm=lambda w: plan.vllm_settings(w.model, w.artifact),
        # a function per job only where lm-eval runs (each one costs a thousand adapters' plan)
        lm_eval=(
            (lambda w: plan.lm_eval if w.artifact in plan.answering else None)
            if plan.lm_eval
            else None
        ),
        lm_eval_tasks=(
            (
                lambda w: (
                    fingerprint(plan.lm_eval["include_path"])
                    if w.artifact in plan.answering
                    else None
                )
            )
            if plan.lm_eval
            else None
        ),
    script:
        "../scripts/evaluate_artifact.py"


# Some evaluations of a model in turn, one job per model (they share the reference, and a team's thousand
# adapters plan and submit one job each instead of one per artifact): evaluate_adapter_lora, an adapter's merged
# GGUFs (the float one, each quantized type), its LoRA GGUF on each base GGUF type, and its merged model (and the
# adapter through PEFT where not skipped); evaluate_adapter, the same for an adapter without the LoRA form;
# evaluate_ggufs, a compressed model's GGUFs (loraforge.workflow.jobs: Plan.IN_TURN).
for group in plan.IN_TURN:
    if plan.in_turn(group) and plan.in_turn_models(group):

        rule:
            name:
                f"evaluate_{group}"
            input:
                unpack(
                    lambda w, group=group: with_external(
                        plan.in_turn_inputs(w.model, group)
                    )
                ),
            output:
                metrics=[
                    paths.fill(paths.METRICS, artifact=a) for a in plan.in_turn(group)
                ],
            log:
                paths.log(f"evaluate_{group}", "{model}"),
            benchmark:
                paths.benchmark(f"evaluate_{group}", "{model}")
            wildcard_constraints:
                model=one_of(plan.in_turn_models(group)),
            conda:
                "../envs/loraforge.yaml"
            threads: plan.threads
            resources:
                mem_mb=lambda w, group=group: plan.in_turn_mem_mb(w.model, group),
                runtime=60 * len(plan.in_turn(group)),  # minutes: an evaluation's, for each in turn
            params:
                each=lambda w, group=group: plan.in_turn_each(w.model, group),
                lm_eval_tasks=(
                    (  # per job: hashed after check_inputs() has read them
                        lambda w: fingerprint(plan.lm_eval["include_path"])
                    )
                    if plan.lm_eval and set(plan.in_turn(group)) & set(plan.answering)
                    else None
                ),
                batch=config["evaluation"]["batch"],
                budget_mb=plan.budget_mb,
            script:
                "../scripts/evaluate_in_turn.py"


rule evaluate_base:
    input:
        base=external(plan.base),
        texts=list(plan.texts.values()),
    output:
        metrics=paths.BASE_METRICS,
    log:
        paths.log("evaluate_base", "base"),
    benchmark:
        paths.benchmark("evaluate_base", "base")
    # before the merges, which read the base too: it is still in memory for them (the fingerprint has just read
    # it), and a merged model is still in memory for its conversion (an evaluation after the merge evicted it)
    priority: 1
    conda:
        "../envs/loraforge.yaml"
    threads: plan.threads
    resources:
        mem_mb=lambda w, input: plan.bounded_mem_mb(2000 + 2 * inputs_mb(input)),
        runtime=60,
    params:
        names=list(plan.texts),
        n_ctx=config["evaluation"]["n_ctx"],
        max_tokens=config["evaluation"]["max_tokens"],
        batch=config["evaluation"]["batch"],
        budget_mb=plan.budget_mb,
    script:
        "../scripts/evaluate_base.py"


rule report_quality:
    input:
        unpack(lambda w: plan.report_inputs()),  # the base's own evaluation unless evaluation.skip names it
    output:
        table=report(
            paths.REPORT_TABLE,
            caption="../report/metrics.rst",
            category="Quality",
            labels={"figure": "all artifacts x metrics"},
        ),
        tsv=paths.REPORT_TSV,
        size_kld=report(
            paths.REPORT_SIZE_KLD,
            caption="../report/size_vs_kld.rst",
            category="Quality",
            labels={"figure": "size vs mean KLD"},
        ),
        ppl=report(
            paths.REPORT_PPL,
            caption="../report/ppl_by_domain.rst",
            category="Quality",
            labels={"figure": "perplexity per text"},
        ),
    log:
        paths.log("report_quality", "report"),
    conda:
        "../envs/loraforge.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        # Snakemake's benchmark records of the jobs behind each artifact: read, not inputs (they are not outputs)
        build_benchmarks=plan.report_benchmarks(),
    script:
        "../scripts/report_quality.py"
