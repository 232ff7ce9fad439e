# loraforge: each LoRA adapter -> merged HF model -> float GGUF -> quantized GGUFs, checked at every step.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/merge.smk"
include: "rules/convert.smk"
include: "rules/quantize.smk"
include: "rules/evaluate.smk"
include: "rules/registry.smk"


rule all:
    default_target: True
    input:
        all_targets(),
