"""The cross-field checks of a config that a JSON schema cannot express, each failing in one line that names the
config key (``ConfigError``). ``plan``: the ``Plan`` being built, its names known."""

from __future__ import annotations

from ..errors import PipelineError
from ..forms import LORA, VLLM_LORA
from ..hfquant import SCHEMES


class ConfigError(PipelineError):
    """A config that cannot build: ``str(err)`` is ``config <key>: <problem>``."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"config {key}: {problem}")
        self.key = key


def check_evaluation(plan, evaluation: dict) -> None:
    """``evaluation.skip`` and ``evaluation.gates`` name artifacts, and something is left to evaluate."""
    # a form this config does not build may be named (the same skip list serves a merged build and a LoRA-only
    # revision of it: --config 'merge={enabled: false}'); a name that is no form at all is a typo
    forms = ["base", "adapter", "merged", "pruned", "distilled", *plan.gguf_types]
    forms += [f"{LORA}{t}" for t in plan.gguf_types] + list(SCHEMES) + [f"{VLLM_LORA}{s}" for s in SCHEMES]
    for name in evaluation["skip"] or []:
        if name not in forms:
            raise ConfigError(f"evaluation.skip.{name}", f"no such artifact (one of {', '.join(forms)})")
    if plan.evaluate and not set(plan.artifacts) - plan.skipped:
        raise ConfigError("evaluation.skip", "skips every artifact: set evaluation.enabled: false instead")
    for gate in evaluation["gates"]:
        if gate not in plan.artifacts:
            raise ConfigError(f"evaluation.gates.{gate}", f"no such artifact (one of {', '.join(plan.artifacts)})")
        if gate in plan.skipped:
            raise ConfigError(f"evaluation.gates.{gate}", "is in evaluation.skip: the gate would never run")


def check_promote(plan, evaluation: dict) -> None:
    """``promote`` compares what is built, evaluated and registered."""
    if not plan.register or not plan.evaluate:
        raise ConfigError("promote", "needs registry.enabled and evaluation.enabled")
    if not plan.merged:
        raise ConfigError("promote", "compares versions of the merged GGUFs: it needs merge.enabled: true for now")
    if plan.promote_quant not in plan.gguf_types:
        raise ConfigError(
            "promote.candidate_quant", f"{plan.promote_quant} is not built (one of {', '.join(plan.gguf_types)})"
        )
    if plan.promote_quant in plan.skipped:
        raise ConfigError(
            "promote.candidate_quant", f"{plan.promote_quant} is in evaluation.skip: promotion compares its numbers"
        )
    for text in plan.promote["require"]:
        if text not in evaluation["texts"]:
            raise ConfigError(
                f"promote.require.{text}", f"no such evaluation text (one of {', '.join(evaluation['texts'])})"
            )
