"""Quality report: one table of all artifacts x metrics and two plots, from the evaluation JSONs."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .evaluation.metrics import Metrics
from .forms import HFModel, form
from .io.publish import atomic_file, write_text_atomic
from .render import NOT_MEASURED, number, render

log = logging.getLogger(__name__)

COLUMNS = [
    ("adapter", "adapter"),
    ("artifact", "artifact"),
    ("form", "form"),
    ("size_mb", "size (MB)"),
    ("per_adapter_mb", "per adapter (MB)"),
    ("bits_per_weight", "bits/weight"),
    ("mean_kld", "mean KLD"),
    ("median_kld", "median KLD"),
    ("p99_kld", "p99 KLD"),
    ("top1_agreement", "top-1 agreement"),
    ("max_delta_ppl", "max ΔPPL"),
    ("stop_rate", "answers stopped"),
    ("answers_identical", "answers = adapter's"),
    ("answer_accuracy", "answers correct"),
    ("tokens_per_second", "tokens/s"),
    ("build_s", "build time (s)"),
]
# how each column's numbers read: KL-divergences span decades, sizes and times need no more than a decimal
FORMATS = {
    "size_mb": ".1f",
    "per_adapter_mb": ".1f",
    "bits_per_weight": ".2f",
    "mean_kld": ".2e",
    "median_kld": ".2e",
    "p99_kld": ".2e",
    "top1_agreement": ".3f",
    "max_delta_ppl": ".3f",
    "stop_rate": ".2f",
    "answers_identical": ".2f",
    "answer_accuracy": ".2f",
    "tokens_per_second": ".0f",
    "build_s": ".1f",
}


def build_seconds(files: list[str]) -> float | None:
    """Wall seconds of the jobs in Snakemake benchmark files, summed; None when any is missing (not measured)."""
    total = 0.0
    for f in files:
        p = Path(f)
        if not p.exists():
            return None
        lines = p.read_text().splitlines()
        total += float(lines[-1].split("\t")[0])  # columns: s, h:m:s, max_rss, ...
    return round(total, 1)


def _rows(base_json, metric_jsons, benchmarks: dict | None = None) -> tuple[list[dict], list[str]]:
    rows, texts = [], []
    entries = [("(base)", "base", Metrics.from_json(json.loads(Path(base_json).read_text())))] if base_json else []
    for p in metric_jsons:
        m = Metrics.from_json(json.loads(Path(p).read_text()))
        adapter, artifact = m.label.split("/", 1)
        entries.append((adapter, artifact, m))
    references = _reference_rows(entries)
    for adapter, artifact, m in entries:
        if adapter in references:  # above the adapter's first artifact: what its rows are measured against
            rows.append(references.pop(adapter))
        row = {"adapter": adapter, "artifact": artifact, "form": _form(m.kind, artifact)}
        if m.size_bytes is not None:
            row["size_mb"] = m.size_bytes / 1e6
            # what each further adapter costs: its LoRA GGUF beside the shared base, or a whole merged model
            if artifact != "base":
                row["per_adapter_mb"] = form(m.kind).per_adapter_bytes(m.size_bytes, m.lora_bytes) / 1e6
        if artifact == "base":
            row["form"] = "base model"
        for key, _ in COLUMNS[5:-1]:
            if getattr(m, key) is not None:
                row[key] = getattr(m, key)
        files = (benchmarks or {}).get(f"{adapter}/{artifact}")
        if files:
            row["build_s"] = build_seconds(files)
        for t, ppl in m.ppl().items():
            row[f"ppl:{t}"] = ppl
            if t not in texts:
                texts.append(t)
        rows.append(row)
        if m.served:
            rows.append(_served_row(row, m.served))
    return rows, texts


REFERENCE_FORM = "the adapter through PEFT, float32: what each row below is measured against"


def _reference_rows(entries) -> dict[str, dict]:
    """Per adapter, its reference's own perplexity on each text (measured by every evaluation of the adapter, from
    the reference's log-probs): the fine-tune's quality, the row each artifact's KLD and top-1 are relative to.
    An adapter whose evaluations disagree on it (they were scored against different references) gets none."""
    seen: dict[str, dict[str, list[float]]] = {}
    for adapter, artifact, m in entries:
        if artifact == "base":
            continue
        for t, tm in m.texts.items():
            if tm.ref_ppl is not None:
                seen.setdefault(adapter, {}).setdefault(t, []).append(tm.ref_ppl)
    out = {}
    for adapter, texts in seen.items():
        if any(max(v) - min(v) > 1e-6 * min(v) for v in texts.values()):
            log.warning("%s: its evaluations were scored against different references: no reference row", adapter)
            continue
        out[adapter] = {"adapter": adapter, "artifact": "reference", "form": REFERENCE_FORM}
        out[adapter].update({f"ppl:{t}": v[0] for t, v in texts.items()})
    return out


def _served_row(row: dict, served: dict) -> dict:
    """A form as vLLM serves it (loraforge.vllm.scoring), below the stand-in's row: its KLD is a lower bound (the
    top-20 tokens with the rest lumped), and says so; a form this CPU's vLLM cannot run says why."""
    out = {k: row[k] for k in ("adapter", "size_mb", "per_adapter_mb", "bits_per_weight") if k in row}
    out["artifact"] = f"{row['artifact']} (vLLM)"
    if served.get("not_scored"):
        out["form"] = f"not scored by vLLM: {served['not_scored']}"
        return out
    lumped = f"KLD: top-{served['top_k']} lumped, a lower bound"
    out["form"] = f"as {served['engine']} serves it ({served['dtype']}); {lumped}"
    out.update(
        mean_kld=served["kld_lumped_mean"],
        p99_kld=served["kld_lumped_p99"],
        top1_agreement=served["top1_agreement"],
        tokens_per_second=served["tokens_per_second"],
    )
    for t, v in served["texts"].items():
        out[f"ppl:{t}"] = v["ppl"]
    return out


def _form(kind: str, artifact: str) -> str:
    """The report's "form" column (loraforge.forms): a compressed model's HF stage is named by its stage."""
    f = form(kind)
    return f.label_of(artifact) if isinstance(f, HFModel) else f.label


def _table_html(rows, cols) -> str:
    """The table as a person reads it: each adapter's rows together, numbers formatted per column."""
    header = [(label, "name" if i < 3 else "") for i, (_key, label) in enumerate(cols)]
    body, previous = [], None
    for r in rows:
        first = "first" if r["adapter"] != previous else ""
        previous = r["adapter"]
        cells = []
        for i, (key, _label) in enumerate(cols):
            css = "name" if i < 2 else "form" if key == "form" else ""
            value = r.get(key)
            text = number(value, FORMATS.get(key, ".4g" if not key.startswith("ppl:") else ".3f"))
            cells.append((text, f"{css} {first}".strip()))
        body.append(cells)
    return render("report.html", header=header, rows=body, not_measured=NOT_MEASURED)


def _plot_size_kld(rows, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, adapter in enumerate(sorted({r["adapter"] for r in rows if "mean_kld" in r and "size_mb" in r})):
        # a log axis cannot show an exact 0; GGUFs are never exact, and the merged dir is the reference itself
        pts = sorted(
            (r["size_mb"], r["mean_kld"], r["artifact"])
            for r in rows
            if r["adapter"] == adapter and r.get("mean_kld", 0) > 0 and "size_mb" in r
        )
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=adapter)
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4 - 11 * i), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KL-divergence vs. reference (nats)")
    ax.set_title("Size vs. quality loss per GGUF type")
    ax.grid(True, alpha=0.3)
    ax.legend(title="adapter")
    fig.tight_layout()
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="svg")
    plt.close(fig)


def _plot_ppl(rows, texts, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adapters = [a for a in dict.fromkeys(r["adapter"] for r in rows) if a != "(base)"]
    base = [("base", r) for r in rows if r["artifact"] == "base"]  # none where evaluation.skip names it
    fig, axes = plt.subplots(1, len(adapters), figsize=(6 * len(adapters), 4.5), squeeze=False)
    for ax, adapter in zip(axes[0], adapters, strict=True):
        series = base + [(r["artifact"], r) for r in rows if r["adapter"] == adapter]
        width = 0.8 / len(series)
        for i, (name, r) in enumerate(series):
            xs = [j + i * width for j in range(len(texts))]
            ax.bar(xs, [r.get(f"ppl:{t}", float("nan")) for t in texts], width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(texts))], texts)
        ax.set_title(f"adapter {adapter}")
        ax.set_ylabel("perplexity (lower is better)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="svg")
    plt.close(fig)


def report_quality(
    base_json, metric_jsons, table_html, tsv, size_kld_svg, ppl_svg, build_benchmarks: dict | None = None
) -> list[dict]:
    """``base_json``: the base model's own evaluation, or None (skipped). ``build_benchmarks``: "adapter/artifact"
    -> the Snakemake benchmark files of the jobs that built it."""
    rows, texts = _rows(base_json, metric_jsons, build_benchmarks)
    cols = COLUMNS + [(f"ppl:{t}", f"PPL {t}") for t in texts]
    write_text_atomic(table_html, _table_html(rows, cols))
    lines = ["\t".join(k for k, _ in cols)] + [
        "\t".join("" if r.get(k) is None else str(r.get(k)) for k, _ in cols) for r in rows
    ]
    write_text_atomic(tsv, "\n".join(lines) + "\n")
    _plot_size_kld(rows, size_kld_svg)
    _plot_ppl(rows, texts, ppl_svg)
    log.info("report of %d artifacts written to %s", len(rows), os.path.dirname(table_html))
    return rows
