"""Each artifact measured through the engines that serve it, as the evaluate_* rules run it: llama.cpp or
transformers / PEFT (loraforge.evaluation) and, for the forms vLLM serves, vLLM itself (loraforge.vllm). It sits
above both, so that the evaluation package never depends on vLLM's."""

from __future__ import annotations

from .evaluation import Metrics, evaluate_artifact
from .forms import form


def evaluate_one(
    out_json,
    label: str,
    kind: str,
    inputs: dict,
    gates: dict | None = None,
    weights: list[float] | None = None,
    vllm: dict | None = None,
    lm_eval: dict | None = None,
    threads: int = 1,
    **common,
) -> Metrics:
    """One artifact's evaluation as a rule runs it (loraforge.evaluation.evaluate_artifact): ``inputs`` are the
    files its form reads (loraforge.forms: ``artifact``, ``check``, ``lora``, ``lora_check``, ``base``,
    ``adapters``, ``scored``) with the ``reference`` and the reference ``answers``; ``weights`` the adapter
    stack's, for a form that applies the adapters; with ``vllm`` (hf_quant's ``max_minutes`` for it:
    loraforge.vllm.scoring.fp8_refusal) also scored (and, where its form answers through vLLM, answering) through
    vLLM."""
    adapters = None
    if form(kind).takes_adapters:
        adapters = [{"path": a, "weight": w} for a, w in zip(inputs["adapters"], weights or [], strict=True)]
    served = answered = None
    if vllm:  # also through vLLM itself, cross-checked with the stand-in
        from .vllm import served_check

        limit = vllm["max_minutes"]
        served = served_check(inputs["artifact"], adapters, inputs["reference"], threads, limit)
        if inputs.get("answers") and form(kind).answers_through == "vllm":  # the generation checks, vLLM's chat API
            from .vllm.generation import vllm_answered

            answered = vllm_answered(inputs["artifact"], adapters, inputs["answers"], threads, label, limit)
    return evaluate_artifact(
        out_json,
        label,
        gates,
        kind=kind,
        path=inputs.get("artifact"),
        check_json=inputs.get("check"),
        scored_json=inputs.get("scored"),
        lora=inputs.get("lora"),
        lora_check_json=inputs.get("lora_check"),
        reference=inputs["reference"],
        base_dir=inputs.get("base"),
        adapters=adapters,
        served=served,
        answers=inputs.get("answers"),
        lm_eval=lm_eval,
        answered=answered,
        threads=threads,
        **common,
    )


def evaluate_in_turn(each: list[dict], threads: int = 1, **common) -> list[Metrics]:
    """The evaluate_adapter(_lora) and evaluate_ggufs rules: several artifacts of one model one after another in one
    job (an adapter's GGUFs, its LoRA GGUF on each base GGUF and its merged model; a compressed model's GGUFs), each
    ``each`` item the keyword arguments of :func:`evaluate_one`, with its own gates. A failing one fails the job:
    none of their files stays (Snakemake removes a failed job's outputs)."""
    return [evaluate_one(threads=threads, **common, **one) for one in each]


__all__ = ["evaluate_in_turn", "evaluate_one"]
