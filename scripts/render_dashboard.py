"""Rule render_dashboard: the static HTML dashboard of the whole registry (loraforge.registry.dashboard)."""

from loraforge.registry import Registry
from loraforge.registry.dashboard import render_dashboard
from loraforge.rule import run


def dashboard(registry, out):
    return render_dashboard(Registry(registry, create=False), out)


if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    run(sm.log[0], dashboard, registry=sm.params.registry, out=sm.output.html)
