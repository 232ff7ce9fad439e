"""Rule evaluate_artifact: PPL / KLD / top-1 of one artifact, quality gates (loraforge.evaluation)."""

from loraforge.evaluation import evaluate_artifact
from loraforge.forms import form
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, w, i = sm.params, sm.wildcards, sm.input
    adapters = None
    if form(p.kind).takes_adapters:
        adapters = [{"path": a, "weight": wt} for a, wt in zip(i.adapters, p.weights, strict=True)]
    served = answered = None
    if p.vllm:  # also through vLLM itself, cross-checked with the stand-in
        from loraforge.vllm import served_check

        served = served_check(i.artifact, adapters, i.reference, sm.threads)
        if i.get("answers") and form(p.kind).answers_through == "vllm":  # the generation checks, vLLM's chat API
            from loraforge.vllm.generation import vllm_answered

            answered = vllm_answered(i.artifact, adapters, i.answers, sm.threads, f"{w.model}/{w.artifact}")
    run(
        sm.log[0],
        evaluate_artifact,
        threads=sm.threads,
        out_json=sm.output.metrics,
        label=f"{w.model}/{w.artifact}",
        gates=dict(p.gates),
        kind=p.kind,
        path=i.get("artifact"),
        check_json=i.get("check"),
        lora=i.get("lora"),
        lora_check_json=i.get("lora_check"),
        reference=i.reference,
        base_dir=i.get("base"),
        adapters=adapters,
        batch=p.batch,
        budget_mb=p.budget_mb,
        served=served,
        answers=i.get("answers"),
        lm_eval=p.lm_eval,
        answered=answered,
    )
