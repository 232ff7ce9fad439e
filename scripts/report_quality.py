"""Rule report_quality: table and plots of every artifact's measured quality (loraforge.report)."""

from loraforge.report import report_quality
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    o = sm.output
    run(
        sm.log[0],
        report_quality,
        base_json=sm.input.get("base"),
        metric_jsons=list(sm.input.metrics),
        table_html=o.table,
        tsv=o.tsv,
        size_kld_svg=o.size_kld,
        ppl_svg=o.ppl,
        build_benchmarks=dict(sm.params.build_benchmarks),
    )
