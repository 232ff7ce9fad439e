"""A self-contained static HTML page across every version of every name in a registry: versions over time with
their metrics per text and artifact type, aliases and their history (reasons included), A/B comparisons, and
size against quality loss. Plots are inline SVG (matplotlib); nothing is fetched when the page is opened."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from ..io.publish import write_text_atomic
from ..render import NOT_MEASURED, render
from .core import Registry

log = logging.getLogger(__name__)


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _evaluation(a) -> dict | None:
    return a.metrics.get("evaluation")


def _ppl_plot(name: str, versions, variant: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points: dict[str, list[tuple[int, float]]] = {}
    for v in versions:
        arts = [a for a in v.artifacts if a.variant == variant and _evaluation(a)]
        for a in arts:
            for text, t in _evaluation(a)["texts"].items():
                points.setdefault(text, []).append((v.version, t["ppl"]))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for text, pts in sorted(points.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=text)
    numbers = sorted({v for pts in points.values() for v, _ppl in pts})
    ax.set_xticks(numbers, [f"v{v}" for v in numbers])  # versions are whole numbers, one tick each
    ax.set_xlim(numbers[0] - 0.5, numbers[-1] + 0.5)
    ax.set_xlabel("version")
    ax.set_ylabel(f"perplexity of the {variant} GGUF")
    ax.set_title(f"{name}: perplexity per text over versions")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _svg(fig)


def _size_kld_plot(reg: Registry) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    any_point = False
    for name in reg.names():
        pts = [
            (a.size / 1e6, _evaluation(a)["mean_kld"], f"v{v.version} {a.variant}")
            for v in reg.versions(name)
            for a in v.artifacts
            if _evaluation(a) and (_evaluation(a).get("mean_kld") or 0) > 0
        ]
        if pts:
            any_point = True
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=name)
            for x, y, label in pts:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if not any_point:
        import matplotlib.pyplot as plt

        plt.close(fig)
        return None
    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KLD vs. the version's float32 reference")
    ax.set_title("Size vs. quality loss, every registered GGUF")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _svg(fig)


def _model(reg: Registry, name: str) -> dict:
    """One name's versions, a row per registered GGUF type, and its alias history, as the page shows them."""
    versions = reg.versions(name)
    texts = sorted({t for v in versions for a in v.artifacts for _, ev in a.measured() for t in ev["texts"]})
    rows = []
    for v in versions:
        artifacts = []
        for a in sorted((a for a in v.artifacts if a.kind != "merged"), key=lambda a: a.variant):
            for label, ev in a.measured() or [(a.variant, {})]:  # a LoRA GGUF: a row per base type
                artifacts.append(
                    {
                        "variant": label,
                        "size_mb": a.size / 1e6,
                        "mean_kld": ev.get("mean_kld"),
                        "top1": ev.get("top1_agreement"),
                        "stopped": ev.get("stop_rate"),
                        "correct": ev.get("answer_accuracy"),
                        "ppl": {t: r["ppl"] for t, r in ev.get("texts", {}).items()},
                    }
                )
        rows.append(
            {
                "version": v.version,
                "created": v.created_at,
                "aliases": ", ".join(v.aliases) or NOT_MEASURED,
                "tags": ", ".join(f"{k}={x}" for k, x in v.tags.items()) or NOT_MEASURED,
                "adapters": ", ".join(a["sha256"][:10] for a in v.lineage.get("adapters", [])) or NOT_MEASURED,
                "artifacts": artifacts
                or [
                    {
                        "variant": NOT_MEASURED,
                        "size_mb": None,
                        "mean_kld": None,
                        "top1": None,
                        "stopped": None,
                        "correct": None,
                        "ppl": {},
                    }
                ],
                "answers": any(a.get("stopped") is not None for a in artifacts),
            }
        )
    answers = any(r["answers"] for r in rows)  # the generation checks' columns, where any version has them
    return {"name": name, "texts": texts, "versions": rows, "history": reg.history(name), "answers": answers}


def _comparisons(reg: Registry) -> list[dict]:
    return [
        {
            "name": c["name"],
            "a": c["version_a"],
            "b": c["version_b"],
            "variant": c["variant"],
            "text": text,
            "delta": r["delta_nll"],
            "lo": r["ci95"][0],
            "hi": r["ci95"][1],
            "p": r["p_value"],
            "kld": r["mean_kld_b_from_a"],
            "top1": r["top1_agreement"],
            "at": c["created_at"],
        }
        for c in reg.comparisons()
        for text, r in c["result"]["texts"].items()
    ]


def render_dashboard(reg: Registry, out) -> Path:
    """Write the dashboard of ``reg`` to ``out`` (one HTML file); returns its path."""
    names = reg.names()
    models = [_model(reg, name) for name in names]
    plots = []
    for name in names:
        versions = reg.versions(name)
        variants = sorted({a.variant for v in versions for a in v.artifacts if a.kind == "gguf"})
        for var in variants[:1] + [v for v in variants[1:] if v.startswith("Q4")][:1]:
            svg = _ppl_plot(name, versions, var)
            if svg:
                plots.append(svg)
    size_kld = _size_kld_plot(reg)
    if size_kld:
        plots.append(size_kld)
    page = render(
        "dashboard.html",
        path=str(reg.path),
        names=names,
        aliases=reg.aliases(),
        models=models,
        comparisons=_comparisons(reg),
        plots=plots,
        not_measured=NOT_MEASURED,
    )
    write_text_atomic(out, page)
    log.info("dashboard of %s written to %s", reg.path, out)
    return Path(out)
