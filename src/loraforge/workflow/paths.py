"""The one path template of every artifact the workflow builds, written once.

Wildcards, one name per meaning:

- ``{adapter}``: a configured adapter (or stack) name;
- ``{model}``: anything with GGUFs: an adapter's merged model, ``base`` (the base's own GGUFs, for the LoRA GGUF
  form) or a compressed model ``<adapter>-<spec>``;
- ``{scheme}``: a GPU-serving checkpoint scheme (``GPTQ-W4A16``, ``AWQ-W4A16``, ``W8A8-INT8``, ``FP8-DYNAMIC``);
- ``{gguf_type}``: a GGUF type (the float type, a quant type, ``<quant>-imat``);
- ``{artifact}``: an evaluated form of a model (``adapter``, ``merged``, a GGUF type, ``lora-<type>``, ``pruned``,
  ``distilled``, a scheme, ``vllm-lora-<scheme>``);
- ``{variant}``: a registered artifact of a model (a GGUF type, ``lora-<type>``, a scheme, ``vllm-lora-<scheme>``).
"""

from __future__ import annotations

import re

MERGED = "results/merged/{adapter}"
MERGE_CHECK = "results/checks/merge/{adapter}.json"
MERGE_WINDOW = "results/checks/merge/{adapter}.logprobs.safetensors"  # the merged model's, float32
GGUF = "results/gguf/{model}/{model}-{gguf_type}.gguf"
GGUF_CHECK = GGUF + ".json"
IMATRIX = "results/imatrix/{model}.imatrix.gguf"
IMATRIX_CHECK = IMATRIX + ".json"
LORA_GGUF = "results/lora/{adapter}/{adapter}-lora-{lora_type}.gguf"
HFQ = "results/hfq/{model}/{model}-{scheme}"
HFQ_CHECK = HFQ + ".json"
PRUNED = "results/pruned/{model}"
PRUNE_SCORES = "results/pruned/{model}.json"
DISTILLED = "results/distilled/{model}"
DISTILL_CURVE = "results/distilled/{model}.json"
REFERENCE = "results/eval/{adapter}/reference.safetensors"
ANSWERS = "results/eval/{adapter}/answers.json"  # the adapter's own answers to evaluation.prompts
METRICS = "results/eval/{model}/{artifact}.json"
BASE_METRICS = "results/base/eval.json"
REPORT_TABLE = "results/report/metrics.html"
REPORT_TSV = "results/report/metrics.tsv"
REPORT_SIZE_KLD = "results/report/size_vs_kld.svg"
REPORT_PPL = "results/report/ppl_by_domain.svg"
RECEIPT = "results/registry/{model}/{variant}.json"
PROMOTION = "results/registry/{adapter}/promotion.json"
COMPARISON = "results/compare/{model}/v{b}-vs-v{a}-{variant}.json"
DASHBOARD = "results/dashboard/index.html"
DEPLOY = "results/deploy/{adapter}"
SPLIT = "results/split/{model}/{model}-{gguf_type}"
SPLIT_CHECK = SPLIT + ".json"


def log(rule: str, name: str) -> str:
    """``logs/<rule>/<name>.log``: the log of one job."""
    return f"logs/{rule}/{name}.log"


def benchmark(rule: str, name: str) -> str:
    """``benchmarks/<rule>/<name>.tsv``: Snakemake's benchmark record of one job."""
    return f"benchmarks/{rule}/{name}.tsv"


def fill(template: str, **wildcards) -> str:
    """A template with some wildcards filled and the others left as wildcards (``{name}``)."""

    class Keep(dict):
        def __missing__(self, key):
            return "{" + key + "}"

    return template.format_map(Keep(wildcards))


def one_of(names) -> str:
    """A wildcard constraint matching exactly ``names``, as a trie of their characters: a flat ``a|b|...`` is tried
    name by name at every match, which a thousand adapters make a measurable part of planning (docs/measurements.md).
    Matches nothing when there are no names."""
    trie: dict = {}
    for name in sorted(set(names)):
        node = trie
        for ch in name:
            node = node.setdefault(ch, {})
        node[""] = {}  # the end of a name
    return _regex(trie) if trie else "^$"


def _regex(node: dict) -> str:
    branches = [re.escape(ch) + _regex(child) for ch, child in sorted(node.items()) if ch]
    if not branches:
        return ""
    if len(branches) == 1:
        return f"(?:{branches[0]})?" if "" in node else branches[0]
    body = "(?:" + "|".join(branches) + ")"
    return body + "?" if "" in node else body
