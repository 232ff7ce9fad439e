# loraforge: each LoRA adapter -> merged HF model -> float GGUF -> quantized GGUFs, checked at every step.
from snakemake.utils import min_version

min_version("9.0")


# config/demo.yaml is the demo; a config given with --configfile replaces it rather than merging into it
# (merged, the demo's adapters would leak into the user's config)
if not workflow.overwrite_configfiles:

    configfile: "config/demo.yaml"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/merge.smk"
include: "rules/convert.smk"
include: "rules/quantize.smk"
include: "rules/evaluate.smk"
include: "rules/registry.smk"
include: "rules/deploy.smk"
include: "rules/compress.smk"


check_inputs()  # every external input, from headers and JSON only, before any job


rule all:
    default_target: True
    input:
        plan.all_targets(),
