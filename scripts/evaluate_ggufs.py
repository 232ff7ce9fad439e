"""Rules evaluate_ggufs and evaluate_lora: every GGUF of a model in turn (its merged model's types, or its LoRA GGUF
on each base GGUF type), PPL / KLD / top-1 and gates for each (loraforge.evaluation.evaluate_ggufs)."""

from loraforge.evaluation import evaluate_ggufs
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, w, i = sm.params, sm.wildcards, sm.input
    answers = [i.answers if a else None for a in p.answering] if "answers" in i.keys() else None
    run(
        sm.log[0],
        evaluate_ggufs,
        threads=sm.threads,
        out_jsons=list(sm.output.metrics),
        labels=[f"{w.model}/{a}" for a in p.artifacts],
        ggufs=list(i.ggufs),
        checks=list(i.checks),
        gates=[dict(g) for g in p.gates],
        lm_evals=[dict(x) if x else None for x in p.lm_eval],
        answers=answers,
        kind=p.kind,
        lora=i.get("lora"),
        lora_check_json=i.get("lora_check"),
        reference=i.reference,
        batch=p.batch,
        budget_mb=p.budget_mb,
    )
