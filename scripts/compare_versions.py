"""Rule compare_versions: A/B statistics of two registered versions (loraforge.registry.compare)."""

import json

from loraforge.io.publish import write_text_atomic
from loraforge.registry.compare import compare_versions, table
from loraforge.rule import run


def compare_to_json(out, **kwargs):
    result = compare_versions(**kwargs)
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, w = sm.params, sm.wildcards
    run(
        sm.log[0],
        compare_to_json,
        threads=sm.threads,
        out=sm.output.result,
        registry=p.registry,
        name=w.model,
        a=int(w.a),
        b=int(w.b),
        variant=w.variant,
        texts=dict(zip(p.names, sm.input.texts, strict=True)),
        n_ctx=p.n_ctx,
        max_tokens=p.max_tokens,
    )
