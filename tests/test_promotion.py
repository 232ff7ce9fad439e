"""Continuous fine-tuning through the workflow: the `code` adapter retrained twice and rebuilt gives versions
1..3 of `code`, each with all its artifacts; the promotion policy moves `production` to the revision that wins
its A/B test (trained longer on code) and refuses the one that loses it (trained on noise); the dashboard shows
it all."""

from __future__ import annotations

import json
import re

import pytest

from loraforge.io.hashing import sha256_file
from loraforge.registry import Registry

pytestmark = pytest.mark.slow


def test_each_retraining_is_a_version_with_all_its_artifacts(history):
    wf, _ = history
    reg = Registry(wf.root / "registry.sqlite")
    versions = reg.versions("code")
    assert [v.version for v in versions] == [1, 2, 3]
    for v in versions:
        assert sorted((a.kind, a.variant) for a in v.artifacts) == [("gguf", "F16"), ("gguf", "Q8_0"), ("merged", "hf")]
        q8 = v.artifact("Q8_0")
        assert q8.metrics["evaluation"]["artifact_sha256"] == q8.sha256
    assert len({v.lineage["adapters"][0]["sha256"] for v in versions}) == 3


def test_promotion_follows_the_ab_test_both_ways(history):
    wf, decisions = history
    assert [(d["candidate"], d["current"], d["moved"]) for d in decisions] == [
        (1, None, True),
        (2, 1, True),
        (3, 2, False),
    ]
    reg = Registry(wf.root / "registry.sqlite")
    assert reg.resolve("code", alias="production").version == 2
    hist = reg.history("code", "production")
    assert [(h["action"], h["version"]) for h in hist] == [("promote", 1), ("promote", 2), ("refused", 3)]
    better, worse = hist[1]["evidence"]["texts"]["code"], hist[2]["evidence"]["texts"]["code"]
    assert better["ci95"][1] < 0 and better["p_value"] < 0.05 and "is below 0 (better)" in hist[1]["reason"]
    assert worse["delta_nll"] > 0 and "not shown better" in hist[2]["reason"]
    log = (wf.root / "logs" / "promote_revision" / "code.log").read_text()
    assert "code: production stays at v2, v3 not promoted" in log  # one line, and the build did not fail
    assert len(reg.comparisons("code")) == 2
    # rollback is still one command, and hands out v1's registered bytes
    assert reg.rollback("code", "production").version == 1
    _mv, path = reg.artifact_file("code", "Q8_0", alias="production")
    # v1's bytes, not another version's of the same shape and size
    assert sha256_file(path) == reg.get("code", 1).artifact("Q8_0").sha256 != reg.get("code", 2).artifact("Q8_0").sha256


def test_compare_target_and_cli(history):
    wf, _ = history
    wf.run("results/compare/code/v3-vs-v1-Q8_0.json")
    r = json.loads((wf.root / "results" / "compare" / "code" / "v3-vs-v1-Q8_0.json").read_text())
    assert (r["a"], r["b"], r["variant"]) == (1, 3, "Q8_0") and r["texts"]["code"]["tokens"] > 500


def test_dashboard_renders_every_version_alias_and_comparison(history, tmp_path):
    from browser import assert_painted, rendered, screenshot

    wf, _ = history
    page = wf.root / "results" / "dashboard" / "index.html"
    html = page.read_text()
    for needle in ("versions-code", "history-code", 'id="comparisons"', "<svg", ">refused<", "v3 vs v2"):
        assert needle in html, needle
    # 4 header rows; the alias; a row per version and GGUF type (3 x F16, Q8_0); 3 alias moves; 2 A/B tests
    assert html.count("<tr>") == 4 + 1 + 3 * 2 + 3 + 2
    seen = rendered(page, tmp_path, width=1400)
    assert seen["scroll_width"] <= seen["window_width"], seen["scroll_width"]  # nothing runs off the right edge
    dom = seen["dom"]
    assert "versions-code" in dom and dom.count("<svg") >= 2 and "production" in dom
    assert ">v1<" in dom and ">v2<" in dom and ">v3<" in dom  # every version, and the versions plot's ticks
    # the perplexity plot has a point per version of each text (matplotlib draws each marker as one <use>)
    ppl_svg = next(s for s in re.findall(r"<svg.*?</svg>", dom, flags=re.S) if "perplexity" in s)
    assert len(re.findall(r"<use ", ppl_svg)) >= 3
    shot = screenshot(page, tmp_path / "dashboard.png", height=2000)
    assert_painted(shot, 1400, 2000)
