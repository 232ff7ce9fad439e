# The self-contained demo: a tiny Llama and two LoRA adapters trained locally (nothing downloaded).


rule build_demo_base:
    output:
        model_dir=directory("results/demo/base"),
    params:
        seed=config["demo"]["seed"],
        steps=config["demo"]["base_steps"],
    log:
        "logs/build_demo_base/base.log",
    benchmark:
        "benchmarks/build_demo_base/base.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../envs/loraforge.yaml"
    script:
        "../scripts/build_demo_base.py"


rule train_demo_adapter:
    input:
        base=rules.build_demo_base.output.model_dir,
    output:
        adapter_dir=directory("results/demo/adapters/{domain}"),
    params:
        seed=config["demo"]["seed"],
        steps=config["demo"]["adapter_steps"],
    log:
        "logs/train_demo_adapter/{domain}.log",
    benchmark:
        "benchmarks/train_demo_adapter/{domain}.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../envs/loraforge.yaml"
    script:
        "../scripts/train_demo_adapter.py"


rule write_demo_texts:
    output:
        code="results/demo/texts/code.txt",
        prose="results/demo/texts/prose.txt",
        general="results/demo/texts/general.txt",
    log:
        "logs/write_demo_texts/texts.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/loraforge.yaml"
    script:
        "../scripts/write_demo_texts.py"
