# The self-contained demo's inputs: a tiny Llama and two LoRA adapters trained locally, and held-out texts
# (nothing downloaded). config/demo.yaml points base_model, adapters and evaluation texts at these outputs.
from loraforge.demo import DOMAINS


rule build_demo_base:
    output:
        model_dir=directory("results/demo/base"),
    log:
        "logs/build_demo_base/base.log",
    benchmark:
        "benchmarks/build_demo_base/base.tsv"
    conda:
        "../envs/loraforge.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        seed=config["demo"]["seed"],
        steps=config["demo"]["base_steps"],
    script:
        "../scripts/build_demo_base.py"


rule train_demo_adapter:
    input:
        base=rules.build_demo_base.output.model_dir,
    output:
        adapter_dir=directory("results/demo/adapters/{domain}"),
    log:
        "logs/train_demo_adapter/{domain}.log",
    benchmark:
        "benchmarks/train_demo_adapter/{domain}.tsv"
    wildcard_constraints:
        domain="|".join(DOMAINS),
    conda:
        "../envs/loraforge.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        seed=config["demo"]["seed"],
        steps=config["demo"]["adapter_steps"],
    script:
        "../scripts/train_demo_adapter.py"


rule write_demo_texts:
    output:
        code="results/demo/texts/code.txt",
        prose="results/demo/texts/prose.txt",
        general="results/demo/texts/general.txt",
    log:
        "logs/write_demo_texts/texts.log",
    conda:
        "../envs/loraforge.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/write_demo_texts.py"
