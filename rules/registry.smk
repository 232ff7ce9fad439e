# Register every GGUF (after its evaluation and quality gates) under its adapter revision; promote a new revision
# when its A/B test says so; compare any two versions; the dashboard of the whole registry.


# Registry steps are small SQLite writes and llama.cpp scoring of two GGUFs: on a cluster they run on the
# submit host, next to the registry file (registration only; compare and promotion may be submitted).
localrules:
    register_model,
    render_dashboard,


rule register_model:
    input:
        unpack(register_inputs),
    output:
        receipt="results/registry/{adapter}/{gguf_type}.json",
    log:
        "logs/register_model/{adapter}-{gguf_type}.log",
    wildcard_constraints:
        adapter="|".join(re.escape(m) for m in EVALUATED),
        gguf_type="|".join(re.escape(t) for t in GGUF_TYPES + [f"lora-{LORA_TYPE}"]),
    conda:
        "../envs/loraforge.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    params:
        registry=config["registry"]["path"],
        store_mode=config["registry"]["store"],
        settings=lambda w: (
            {**LINEAGE_SETTINGS, "compress": compress_spec(w.adapter)}
            if w.adapter in COMPRESSED
            else LINEAGE_SETTINGS
        ),
    script:
        "../scripts/register_model.py"


rule promote_revision:
    input:
        receipts=lambda w: expand(
            rules.register_model.output.receipt,
            adapter=w.adapter,
            gguf_type=GGUF_TYPES,
        ),
        texts=eval_texts(),
    output:
        decision="results/registry/{adapter}/promotion.json",
    log:
        "logs/promote_revision/{adapter}.log",
    benchmark:
        "benchmarks/promote_revision/{adapter}.tsv"
    conda:
        "../envs/loraforge.yaml"
    threads: THREADS
    resources:
        mem_mb=lambda w, input: int(1500 + 3 * gguf_size_mb(w.adapter, PROMOTE_QUANT)),
        runtime=60,
    params:
        registry=config["registry"]["path"],
        policy=config.get("promote"),
        names=list(config["evaluation"]["texts"]),
        n_ctx=config["evaluation"]["n_ctx"],
        max_tokens=config["evaluation"]["max_tokens"],
    script:
        "../scripts/promote_revision.py"


rule compare_versions:
    input:
        texts=eval_texts(),
    output:
        result="results/compare/{name}/v{b}-vs-v{a}-{gguf_type}.json",
    log:
        "logs/compare_versions/{name}-v{b}-vs-v{a}-{gguf_type}.log",
    wildcard_constraints:
        a=r"\d+",
        b=r"\d+",
    conda:
        "../envs/loraforge.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        registry=config["registry"]["path"],
        names=list(config["evaluation"]["texts"]),
        n_ctx=config["evaluation"]["n_ctx"],
        max_tokens=config["evaluation"]["max_tokens"],
    script:
        "../scripts/compare_versions.py"


rule render_dashboard:
    input:
        receipts=registry_receipts(),
        decisions=promotion_decisions(),
    output:
        html="results/dashboard/index.html",
    log:
        "logs/render_dashboard/dashboard.log",
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
