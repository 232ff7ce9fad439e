# Register every artifact (after its evaluation and quality gates) under its adapter revision: a model's GGUFs in
# one job, the LoRA GGUF and each GPU-serving form in one each; promote a new revision
# when its A/B test says so; compare any two versions; the dashboard of the whole registry.


# With a SQLite registry every rule that writes it runs on the submit host, next to the file (localrule: SQLite's
# locks and WAL do not hold across hosts, nor on a network filesystem, which loraforge.registry refuses);
# promotion and comparison score two GGUFs with llama.cpp there too. With PostgreSQL they may run on any node.


# A model's GGUFs register in one job; an adapter's LoRA GGUF with them where it has that form (register_ggufs_lora:
# a rule's outputs are the same for every model, and an adapter whose LoRA form is refused has none). A revision's
# GGUFs enter the registry together, and a team's thousand adapters plan one registration job each.
for lora in (False, True):
    if plan.gguf_registered_with(lora):

        rule:
            name:
                "register_ggufs_lora" if lora else "register_ggufs"
            input:
                unpack(lambda w: plan.register_ggufs_inputs(w.model)),
            output:
                receipts=[
                    paths.fill(paths.RECEIPT, variant=v)
                    for v in plan.gguf_variants(lora)
                ],
            log:
                paths.log(
                    "register_ggufs_lora" if lora else "register_ggufs", "{model}"
                ),
            wildcard_constraints:
                model=one_of(plan.gguf_registered_with(lora)),
            localrule: plan.registry_local
            conda:
                "../envs/loraforge.yaml"
            threads: 1
            resources:
                mem_mb=500,
                runtime=10 * len(plan.gguf_variants(lora)),  # minutes: a registration's, for each in turn
            params:
                registry=config["registry"]["path"],
                store_mode=config["registry"]["store"],
                variants=plan.gguf_variants(lora),
                measured=plan.measured_ggufs(),
                settings=lambda w: plan.lineage_settings(w.model),
                artifact_settings=lambda w, lora=lora: {
                    v: plan.artifact_settings(w.model, v)
                    for v in plan.gguf_variants(lora)
                },
                merged_settings=plan.artifact_settings("", "merged"),
            script:
                "../scripts/register_ggufs.py"


rule register_model:
    input:
        unpack(lambda w: plan.register_inputs(w.model, w.variant)),
    output:
        receipt=paths.RECEIPT,
    log:
        paths.log("register_model", "{model}-{variant}"),
    wildcard_constraints:
        model=one_of(plan.evaluated),
        variant=one_of(plan.registered_variants()),
    localrule: plan.registry_local
    conda:
        "../envs/loraforge.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    params:
        registry=config["registry"]["path"],
        store_mode=config["registry"]["store"],
        settings=lambda w: plan.lineage_settings(w.model),
        artifact_settings=lambda w: plan.artifact_settings(w.model, w.variant),
        merged_settings=plan.artifact_settings("", "merged"),
        weights=lambda w: plan.adapter_weights(w.model),
    script:
        "../scripts/register_model.py"


rule promote_revision:
    input:
        receipts=lambda w: expand(
            rules.register_model.output.receipt,
            model=w.adapter,
            variant=plan.gguf_types,
        ),
        texts=list(plan.texts.values()),
    output:
        decision=paths.PROMOTION,
    log:
        paths.log("promote_revision", "{adapter}"),
    benchmark:
        paths.benchmark("promote_revision", "{adapter}")
    localrule: plan.registry_local
    conda:
        "../envs/loraforge.yaml"
    threads: plan.threads
    resources:
        mem_mb=lambda w: int(
            1500 + 3 * size_mb(plan.gguf(w.adapter, plan.promote_quant))
        ),
        runtime=60,
    params:
        registry=config["registry"]["path"],
        policy=plan.promote,
        names=list(plan.texts),
        n_ctx=config["evaluation"]["n_ctx"],
        max_tokens=config["evaluation"]["max_tokens"],
    script:
        "../scripts/promote_revision.py"


rule compare_versions:
    input:
        texts=list(plan.texts.values()),
    output:
        result=paths.COMPARISON,
    log:
        paths.log("compare_versions", "{model}-v{b}-vs-v{a}-{variant}"),
    wildcard_constraints:
        a=r"\d+",
        b=r"\d+",
        model=r"[^/]+",
        variant=r"[^/]+",
    localrule: plan.registry_local
    conda:
        "../envs/loraforge.yaml"
    threads: plan.threads
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        registry=config["registry"]["path"],
        names=list(plan.texts),
        n_ctx=config["evaluation"]["n_ctx"],
        max_tokens=config["evaluation"]["max_tokens"],
    script:
        "../scripts/compare_versions.py"


rule render_dashboard:
    input:
        receipts=plan.dashboard_receipts(),
        decisions=plan.promotions(),
    output:
        html=paths.DASHBOARD,
    log:
        paths.log("render_dashboard", "dashboard"),
    localrule: plan.registry_local
    conda:
        "../envs/loraforge.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        registry=config["registry"]["path"],
    script:
        "../scripts/render_dashboard.py"
