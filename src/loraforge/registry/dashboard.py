"""A self-contained static HTML page across every version of every name in a registry: versions over time with
their metrics per text and artifact type, aliases and their history (reasons included), A/B comparisons, and
size against quality loss. Plots are inline SVG (matplotlib); nothing is fetched when the page is opened."""

from __future__ import annotations

import html
import io
import logging
from pathlib import Path

from ..io.publish import write_text_atomic
from .store import Registry

log = logging.getLogger(__name__)

CSS = (
    "body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0 20px}"
    "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right;font-size:13px}th{background:#eee}"
    "td.l,th.l{text-align:left}h2{margin-top:32px}.plots{display:flex;flex-wrap:wrap;gap:16px}"
    ".moved{color:#070}.refused{color:#a00}"
)


def _e(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(head: list[str], rows: list[list], left: int = 1, table_id: str = "") -> str:
    th = "".join(f"<th class='{'l' if i < left else ''}'>{html.escape(h)}</th>" for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f"<td class='{'l' if i < left else ''}'>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table id='{table_id}'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


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
    ax.set_xlabel("version")
    ax.set_ylabel(f"perplexity of the {variant} GGUF")
    ax.set_title(f"{name}: perplexity per text over versions")
    ax.xaxis.get_major_locator().set_params(integer=True)
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


def render_dashboard(reg: Registry, out) -> Path:
    """Write the dashboard of ``reg`` to ``out`` (one HTML file); returns its path."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>loraforge registry</title><style>{CSS}"
        f"</style></head><body><h1>Model registry</h1><p>{html.escape(str(reg.path))}: "
        f"{len(reg.names())} model name(s). Every number below was measured by the pipeline; — means not "
        "measured.</p>"
    ]
    aliases = reg.aliases()
    parts.append(
        "<h2>Aliases</h2>"
        + _table(
            ["name", "alias", "version", "since"],
            [[_e(a["name"]), _e(a["alias"]), f"v{a['version']}", _e(a["updated_at"])] for a in aliases],
            left=2,
            table_id="aliases",
        )
    )
    plots = []
    for name in reg.names():
        versions = reg.versions(name)
        variants = sorted({a.variant for v in versions for a in v.artifacts if a.kind == "gguf"})
        texts = sorted({t for v in versions for a in v.artifacts if _evaluation(a) for t in _evaluation(a)["texts"]})
        head = ["version", "created", "aliases", "tags", "adapters"] + [
            f"{var} {col}" for var in variants for col in ["mean KLD", *(f"PPL {t}" for t in texts)]
        ]
        rows = []
        for v in versions:
            row = [
                f"v{v.version}",
                _e(v.created_at),
                _e(",".join(v.aliases) or None),
                _e(", ".join(f"{k}={x}" for k, x in v.tags.items()) or None),
                _e(", ".join(a["sha256"][:10] for a in v.lineage.get("adapters", []))),
            ]
            for var in variants:
                ev = next((_evaluation(a) for a in v.artifacts if a.variant == var and _evaluation(a)), None)
                row.append(_e(ev.get("mean_kld") if ev else None))
                row += [_e(ev["texts"][t]["ppl"] if ev and t in ev["texts"] else None) for t in texts]
            rows.append(row)
        parts.append(
            f"<h2>{html.escape(name)}: versions</h2>"
            + _table(head, rows, left=5, table_id=f"versions-{html.escape(name)}")
        )
        hist = reg.history(name)
        parts.append(
            f"<h3>{html.escape(name)}: alias history</h3>"
            + _table(
                ["at", "alias", "action", "from", "to", "reason"],
                [
                    [
                        _e(h["at"]),
                        _e(h["alias"]),
                        f"<span class='{'refused' if h['action'] == 'refused' else 'moved'}'>{_e(h['action'])}</span>",
                        _e(h["previous_version"]),
                        f"v{h['version']}",
                        _e(h["reason"]),
                    ]
                    for h in hist
                ],
                left=3,
                table_id=f"history-{html.escape(name)}",
            )
        )
        for var in variants[:1] + [v for v in variants[1:] if v.startswith("Q4")][:1]:
            svg = _ppl_plot(name, versions, var)
            if svg:
                plots.append(svg)
    comps = reg.comparisons()
    rows = []
    for c in comps:
        for text, r in c["result"]["texts"].items():
            rows.append(
                [
                    _e(c["name"]),
                    f"v{c['version_b']} vs v{c['version_a']}",
                    _e(c["variant"]),
                    _e(text),
                    f"{r['delta_nll']:+.4f}",
                    f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]",
                    _e(r["p_value"]),
                    _e(r["mean_kld_b_from_a"]),
                    _e(r["top1_agreement"]),
                    _e(c["created_at"]),
                ]
            )
    parts.append(
        "<h2>A/B comparisons</h2><p>B - A: mean per-token NLL difference (negative: B is better), "
        "95% paired-bootstrap interval over windows.</p>"
        + _table(
            ["name", "B vs A", "type", "text", "B - A (nats/token)", "95% CI", "p", "KLD B|A", "top-1", "at"],
            rows,
            left=4,
            table_id="comparisons",
        )
    )
    size_kld = _size_kld_plot(reg)
    if size_kld:
        plots.append(size_kld)
    parts.append(
        "<h2>Plots</h2><div class='plots'>"
        + "".join(f"<div class='plot'>{p}</div>" for p in plots)
        + "</div></body></html>\n"
    )
    write_text_atomic(out, "".join(parts))
    log.info("dashboard of %s written to %s", reg.path, out)
    return Path(out)
