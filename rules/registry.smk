# Register every GGUF, after its evaluation (and quality gates) passed, with lineage and measured metrics.


# Registration is a tiny SQLite write: on a cluster it runs on the submit host, next to the registry file.
localrules:
    register_model,


rule register_model:
    input:
        unpack(register_inputs),
    output:
        receipt="results/registry/{adapter}/{gguf_type}.json",
    log:
        "logs/register_model/{adapter}-{gguf_type}.log",
    conda:
        "../envs/loraforge.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    params:
        registry=config["registry"]["path"],
        settings=lineage_settings,
    script:
        "../scripts/register_model.py"
