"""Rule merge_adapter: merge, check against PEFT, publish (loraforge.merge.merge_artifact)."""

from loraforge.merge import merge_artifact
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p = sm.params
    run(sm.log[0], merge_artifact, threads=sm.threads,
        base_dir=p.base_dir, adapters=p.adapters, out_dir=sm.output.model_dir, check_json=sm.output.check,
        method=p.method, shard_size_mb=p.shard_size_mb, check=p.check, check_text=p.check_text,
        tolerance=dict(p.tolerance))
