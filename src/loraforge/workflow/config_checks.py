"""The cross-field checks of a config that a JSON schema cannot express, each failing in one line that names the
config key (``ConfigError``). ``plan``: the ``Plan`` being built, its names known."""

from __future__ import annotations

from ..errors import PipelineError
from ..forms import LORA, VLLM_LORA, form_of
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


def answering_forms(plan, evaluation: dict) -> set[str]:
    """The artifacts that answer ``evaluation.prompts`` (the generation checks) and run ``evaluation.lm_eval``:
    ``evaluation.answer_forms``, or the forms the deploy bundle ships; each must be built, evaluated and have a
    generation path. Gates on the answers need them."""
    from ..evaluation.metrics import ANSWER_GATES

    gated = sorted((art, g) for art, gates in evaluation["gates"].items() for g in gates if g in ANSWER_GATES)
    if gated and not (plan.evaluate and evaluation["prompts"]):
        art, g = gated[0]
        raise ConfigError(f"evaluation.gates.{art}.{g}", "gates the generation checks: set evaluation.prompts")
    if not (evaluation["prompts"] or evaluation["lm_eval"]) or not plan.evaluate:
        return set()
    named = evaluation["answer_forms"]
    if named is None:
        shipped = {plan.deploy_type, f"{LORA}{plan.deploy_type}"}
        forms = {a for a in plan.artifacts if a in shipped and a not in plan.skipped}
    else:
        forms = set(named)
        for art in named:
            key = f"evaluation.answer_forms.{art}"
            if art not in plan.artifacts:
                raise ConfigError(key, f"no such artifact in this build (one of {', '.join(plan.artifacts)})")
            if art in plan.skipped:
                raise ConfigError(key, "is in evaluation.skip: it is not evaluated")
            if form_of(art, plan.hfq_schemes).answers_through == "vllm" and not plan.vllm_scored:
                raise ConfigError(key, "a vLLM form answers through vLLM itself: it needs hf_quant.vllm: true")
    if evaluation["lm_eval"] and not any(form_of(a, plan.hfq_schemes).llama_cpp for a in forms):
        raise ConfigError(
            "evaluation.lm_eval", "runs against the answering GGUFs, and evaluation.answer_forms has none"
        )
    for art, g in gated:
        if art not in forms:
            why = f"{art} does not answer the prompts (evaluation.answer_forms)"
            raise ConfigError(f"evaluation.gates.{art}.{g}", why)
    return forms


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
    if plan.promote.get("answers") and plan.promote_quant not in plan.answering:
        raise ConfigError(
            "promote.answers", f"{plan.promote_quant} does not answer the prompts (evaluation.prompts, answer_forms)"
        )
    for text in plan.promote["require"]:
        if text not in evaluation["texts"]:
            raise ConfigError(
                f"promote.require.{text}", f"no such evaluation text (one of {', '.join(evaluation['texts'])})"
            )
