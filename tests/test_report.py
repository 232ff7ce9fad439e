"""loraforge.report: the table and plots of every artifact's measured quality."""

from __future__ import annotations

import json

from loraforge.evaluation.metrics import Metrics, TextMetrics
from loraforge.report import report_quality


def metrics(label, ppl, kld=None, size=None, bpw=None) -> dict:
    text = TextMetrics(scored_tokens=100, ppl=ppl, mean_kld=kld)
    return Metrics(
        label=label,
        artifact=label,
        kind="gguf",
        n_ctx=64,
        texts={"general": text},
        scored_tokens=100,
        eval_seconds=1,
        load_seconds=1,
        mean_kld=kld,
        size_bytes=size,
        bits_per_weight=bpw,
    ).to_json()


def test_report_of_base_and_artifacts(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps(metrics("base", 20.0)))
    files = []
    for art, kld, size in (("F16", 1e-7, 2_000_000), ("Q8_0", 4e-5, 1_100_000), ("Q4_K_M", 2e-3, 600_000)):
        f = tmp_path / f"{art}.json"
        f.write_text(json.dumps(metrics(f"code/{art}", 18.0 + kld * 100, kld, size, 16.0)))
        files.append(f)
    out = {k: tmp_path / f"out.{k}" for k in ("html", "tsv", "svg1", "svg2")}
    bench = {}
    for job, secs in (("merge", 4.5), ("convert", 7.25), ("quantize", 1.0)):
        (tmp_path / f"{job}.tsv").write_text(f"s\th:m:s\tmax_rss\n{secs}\t0:00:0{int(secs)}\t100\n")
        bench[job] = str(tmp_path / f"{job}.tsv")
    benchmarks = {
        "code/F16": [bench["merge"], bench["convert"]],
        "code/Q8_0": [bench["merge"], bench["convert"], bench["quantize"]],
        "code/Q4_K_M": [bench["merge"], str(tmp_path / "never-ran.tsv")],
    }
    rows = report_quality(
        tmp_path / "base.json", files, out["html"], out["tsv"], out["svg1"], out["svg2"], build_benchmarks=benchmarks
    )
    assert [r.get("build_s") for r in rows] == [None, 11.8, 12.8, None]  # a missing record is not measured
    assert [(r["adapter"], r["artifact"]) for r in rows] == [
        ("(base)", "base"),
        ("code", "F16"),
        ("code", "Q8_0"),
        ("code", "Q4_K_M"),
    ]
    html = out["html"].read_text()
    assert html.count("<tr>") == 5 and "—" in html  # the base has no KLD: shown as not measured, not 0
    tsv = out["tsv"].read_text().splitlines()
    head = tsv[0].split("\t")
    assert head[:7] == ["adapter", "artifact", "form", "size_mb", "per_adapter_mb", "bits_per_weight", "mean_kld"]
    assert tsv[4].split("\t")[6] == "0.002" and tsv[4].split("\t")[2] == "merged GGUF"
    for svg in (out["svg1"], out["svg2"]):
        assert "<svg" in svg.read_text() and "Q4_K_M" in svg.read_text()
    # the base's own evaluation skipped (evaluation.skip: [base]): no base row, the plots still drawn
    rows = report_quality(None, files, out["html"], out["tsv"], out["svg1"], out["svg2"])
    assert [r["artifact"] for r in rows] == ["F16", "Q8_0", "Q4_K_M"]
    assert out["html"].read_text().count("<tr>") == 4 and "Q4_K_M" in out["svg2"].read_text()


def test_each_adapter_gets_its_references_row_above_its_artifacts(tmp_path):
    """The reference's own perplexity (every evaluation of the adapter measured it from the reference's log-probs) is
    the row the others are relative to; evaluations scored against different references give no row."""

    def scored(label, ppl, ref_ppl):
        m = metrics(label, ppl, 0.01)
        m["texts"]["general"]["ref_ppl"] = ref_ppl
        return m

    files = []
    scores = (("code/merged", 6.58, 6.5712345), ("code/Q4_K_M", 7.03, 6.5712345), ("prose/F16", 9.1, 9.0))
    for label, ppl, ref in scores:
        files.append(tmp_path / f"{label.replace('/', '-')}.json")
        files[-1].write_text(json.dumps(scored(label, ppl, ref)))
    out = [tmp_path / f"out.{k}" for k in ("html", "tsv", "svg1", "svg2")]
    rows = report_quality(None, files, *out)
    assert [(r["adapter"], r["artifact"]) for r in rows] == [
        ("code", "reference"),
        ("code", "merged"),
        ("code", "Q4_K_M"),
        ("prose", "reference"),
        ("prose", "F16"),
    ]
    assert rows[0]["ppl:general"] == 6.5712345 and "mean_kld" not in rows[0]  # no KLD against itself
    assert "the adapter through PEFT, float32" in out[0].read_text()
    files[1].write_text(json.dumps(scored("code/Q4_K_M", 7.03, 6.9)))
    assert [r["artifact"] for r in report_quality(None, files, *out)][:2] == ["merged", "Q4_K_M"]


def test_a_form_vllm_scored_gets_its_own_row_and_one_it_could_not_says_why(tmp_path):
    served = {
        "engine": "vLLM 0.32.0",
        "dtype": "bfloat16",
        "top_k": 20,
        "kld_lumped_mean": 0.117,
        "kld_lumped_p99": 0.88,
        "top1_agreement": 0.818,
        "tokens_per_second": 472.0,
        "texts": {"general": {"ppl": 7.84}},
    }
    files = []
    for art, extra in (("AWQ-W4A16", served), ("GPTQ-W4A16", {"engine": "vLLM", "not_scored": "no W4A16 kernel"})):
        m = {**metrics(f"code/{art}", 7.8, 0.15, 114_000_000, 6.8), "kind": "hfq", "served": extra}
        files.append(tmp_path / f"{art}.json")
        files[-1].write_text(json.dumps(m))
    out = {k: tmp_path / f"out.{k}" for k in ("html", "tsv", "svg1", "svg2")}
    rows = report_quality(None, files, out["html"], out["tsv"], out["svg1"], out["svg2"])
    assert [r["artifact"] for r in rows] == ["AWQ-W4A16", "AWQ-W4A16 (vLLM)", "GPTQ-W4A16", "GPTQ-W4A16 (vLLM)"]
    assert rows[1]["form"] == "as vLLM 0.32.0 serves it (bfloat16); KLD: top-20 lumped, a lower bound"
    assert (rows[1]["mean_kld"], rows[1]["top1_agreement"], rows[1]["ppl:general"]) == (0.117, 0.818, 7.84)
    assert rows[0]["mean_kld"] == 0.15 and rows[0]["form"] == "merged, compressed-tensors (vLLM)"
    assert rows[3]["form"] == "not scored by vLLM: no W4A16 kernel" and "mean_kld" not in rows[3]
