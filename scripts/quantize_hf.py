"""Rule quantize_hf: a GPTQ / AWQ compressed-tensors checkpoint of one HF model (loraforge.hfquant)."""

from loraforge.hfquant import quantize_checkpoint
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, i = sm.params, sm.input
    run(
        sm.log[0],
        quantize_checkpoint,
        threads=sm.threads,
        model_dir=i.model_dir,
        out_dir=sm.output.checkpoint,
        sidecar=sm.output.check,
        scheme_name=sm.wildcards.scheme,
        text=i.text,
        samples=p.samples,
        seq_len=p.seq_len,
        group_size=p.group_size,
    )
