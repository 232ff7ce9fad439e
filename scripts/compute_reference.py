"""Rule compute_reference: float32 log-probs of the merged model (loraforge.evaluate.compute_reference)."""

from loraforge.evaluate import compute_reference
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p = sm.params
    run(sm.log[0], compute_reference, threads=sm.threads, model_dir=sm.input.model_dir, texts=dict(p.texts),
        out=sm.output.reference, n_ctx=p.n_ctx, max_tokens=p.max_tokens, batch=p.batch)
