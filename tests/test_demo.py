"""The default config end to end: the demo trains its models, builds 2 adapters x {F16, Q8_0, Q4_K_M},
measures them, and the report renders. The numbers asserted here are ones a user would notice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.slow
QUANTS = ["F16", "Q8_0", "Q4_K_M"]


@pytest.fixture(scope="module")
def demo(demo_local):
    return demo_local


def metrics(wf, adapter, artifact):
    return json.loads((wf.root / "results" / "eval" / adapter / f"{artifact}.json").read_text())


def test_demo_builds_every_gguf(demo):
    for a in ("code", "prose"):
        for q in QUANTS:
            f = demo.root / "results" / "gguf" / a / f"{a}-{q}.gguf"
            assert f.read_bytes()[:4] == b"GGUF", f


def test_kld_orders_with_precision(demo):
    for a in ("code", "prose"):
        kld = [metrics(demo, a, q)["mean_kld"] for q in QUANTS]
        assert kld[0] < kld[1] < kld[2], kld
        assert metrics(demo, a, "F16")["top1_agreement"] >= 0.99


def test_each_adapter_lowers_ppl_on_its_own_domain(demo):
    base = json.loads((demo.root / "results" / "base" / "eval.json").read_text())["texts"]
    for a in ("code", "prose"):
        m = metrics(demo, a, "adapter")["texts"]
        assert m[a]["ppl"] < 0.97 * base[a]["ppl"], (a, m[a]["ppl"], base[a]["ppl"])
        merged = metrics(demo, a, "merged")
        assert abs(merged["texts"][a]["ppl"] - m[a]["ppl"]) < 1e-3 * m[a]["ppl"]


def test_merge_fidelity_is_measured(demo):
    for a in ("code", "prose"):
        assert metrics(demo, a, "adapter")["mean_kld"] < 1e-5  # PEFT-applied vs. merged: the merge is exact
        assert metrics(demo, a, "Q4_K_M")["bits_per_weight"] < metrics(demo, a, "Q8_0")["bits_per_weight"]


def test_report_renders_table_and_plots(demo, tmp_path):
    demo.run("--report", "report.html")
    page = (demo.root / "report.html").read_text()
    for name in ("metrics.html", "size_vs_kld.svg", "ppl_by_domain.svg"):
        assert name in page
    table = (demo.root / "results" / "report" / "metrics.html").read_text()
    assert table.count("<tr>") == 1 + 1 + 2 * 5  # header, base, 2 adapters x 5 artifacts
    for svg in ("size_vs_kld.svg", "ppl_by_domain.svg"):
        text = (demo.root / "results" / "report" / svg).read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text and "Q4_K_M" in text
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed in CI (apt-get install chromium)")
        pytest.skip("chromium not installed: the report was parsed but not rendered in a browser")
    shots = []
    for page_file in (demo.root / "report.html", demo.root / "results" / "report" / "metrics.html"):
        shot = tmp_path / f"{page_file.stem}.png"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'chrome'}",
                "--window-size=1400,1000",
                f"--screenshot={shot}",
                f"file://{page_file}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert shot.stat().st_size > 10_000
        shots.append(shot)
    if os.environ.get("LORAFORGE_KEEP_SCREENSHOTS"):
        for s in shots:
            shutil.copy(s, os.environ["LORAFORGE_KEEP_SCREENSHOTS"])
