# Register every GGUF, after its evaluation (and quality gates) passed, with lineage and measured metrics.


# Registration is a tiny SQLite write: on a cluster it runs on the submit host, next to the registry file.
localrules:
    register_model,


rule register_model:
    input:
        unpack(register_inputs),
    output:
        receipt="results/registry/{adapter}/{gguf_type}.json",
    params:
        registry=config["registry"]["path"],
        base_dir=BASE,
        adapters=lambda w: adapter_specs(w.adapter),
        settings=lineage_settings,
    log:
        "logs/register_model/{adapter}-{gguf_type}.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    conda:
        "../envs/loraforge.yaml"
    script:
        "../scripts/register_model.py"
