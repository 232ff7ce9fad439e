"""Rule evaluate_lora: an adapter's LoRA GGUF on each base GGUF type, PPL / KLD / top-1 and gates for each pair
(loraforge.evaluation.evaluate_lora_pairs)."""

from loraforge.evaluation import evaluate_lora_pairs
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, w, i = sm.params, sm.wildcards, sm.input
    answers = [i.answers if a else None for a in p.answering] if "answers" in i.keys() else None
    run(
        sm.log[0],
        evaluate_lora_pairs,
        threads=sm.threads,
        out_jsons=list(sm.output.metrics),
        labels=[f"{w.model}/{a}" for a in p.artifacts],
        base_ggufs=list(i.base_ggufs),
        base_checks=list(i.base_checks),
        gates=[dict(g) for g in p.gates],
        lm_evals=[dict(x) if x else None for x in p.lm_eval],
        answers=answers,
        kind="lora",
        lora=i.lora,
        lora_check_json=i.lora_check,
        reference=i.reference,
        batch=p.batch,
        budget_mb=p.budget_mb,
    )
