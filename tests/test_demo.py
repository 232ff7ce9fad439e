"""The default config end to end: the real model (SmolLM2-135M-Instruct) and two adapters trained on it go through
merge, BF16 / Q8_0 / Q4_K_M GGUFs, evaluation and the registry; the report renders; the model chats through its
real template in llama-server. The numbers asserted here are ones a user would notice."""

from __future__ import annotations

import csv
import json

import pytest

pytestmark = pytest.mark.slow
GGUFS = ["BF16", "Q8_0", "Q4_K_M"]


@pytest.fixture(scope="module")
def demo(demo_local):
    return demo_local


def metrics(wf, adapter, artifact):
    return json.loads((wf.root / "results" / "eval" / adapter / f"{artifact}.json").read_text())


def test_demo_builds_every_gguf_with_the_real_tokenizer_checked(demo):
    for a in ("code", "prose"):
        for q in GGUFS:
            f = demo.root / "results" / "gguf" / a / f"{a}-{q}.gguf"
            assert f.read_bytes()[:4] == b"GGUF", f
        tok = json.loads((demo.root / "results" / "gguf" / a / f"{a}-BF16.gguf.json").read_text())["tokenizer"]
        assert tok["pre"] == "smollm" and tok["chat_template_kept"] and tok["chat_text_identical"]
        assert tok["special_ids"]["eos"] == 2 and tok["stop_ids"] == [2]  # <|im_end|> ends a turn
        for q in GGUFS:
            assert all(t["llama_cpp_tokens_agree"] for t in metrics(demo, a, q)["texts"].values())
        # the merged model's GGUFs: the first window their build checks scored is counted in, not scored twice
        first = next(iter(metrics(demo, a, "BF16")["texts"]))
        for q in ("BF16", "Q8_0", "Q4_K_M", "Q4_K_M-imat"):
            assert metrics(demo, a, q)["from_check"] == {"text": first, "windows": 1}, q
        assert "from_check" not in metrics(demo, a, "lora-BF16")


def test_kld_orders_with_precision(demo):
    for a in ("code", "prose"):
        kld = [metrics(demo, a, q)["mean_kld"] for q in GGUFS]
        assert kld[0] < kld[1] < kld[2], kld
        # against the adapter through PEFT in float32: the BF16 GGUF carries the merge's rounding to bfloat16
        # (the merge check's own bound is top-1 0.98); the LoRA GGUF on the base's BF16 GGUF, never merged, does not
        bf16, lora = metrics(demo, a, "BF16"), metrics(demo, a, "lora-BF16")
        assert bf16["top1_agreement"] >= 0.98 and lora["mean_kld"] < bf16["mean_kld"], (bf16, lora)


def test_each_adapter_is_the_best_model_for_its_own_domain(demo):
    """Both domains are Python, so each adapter helps both; but on its own domain each adapter beats the base by
    more than 5% and beats the other adapter."""
    base = json.loads((demo.root / "results" / "base" / "eval.json").read_text())["texts"]
    # each adapter's reference (through PEFT, float32), as its every evaluation measured it: the report's row
    ppl = {a: {t: m["ref_ppl"] for t, m in metrics(demo, a, "merged")["texts"].items()} for a in ("code", "prose")}
    for a, other in (("code", "prose"), ("prose", "code")):
        assert ppl[a][a] < 0.95 * base[a]["ppl"], (a, ppl[a][a], base[a]["ppl"])
        assert ppl[a][a] < ppl[other][a], (a, ppl[a][a], ppl[other][a])
        merged = metrics(demo, a, "merged")
        assert abs(merged["texts"][a]["ppl"] - ppl[a][a]) < 0.01 * ppl[a][a]
    with open(demo.root / "results" / "report" / "metrics.tsv") as f:
        rows = {(r["adapter"], r["artifact"]): r for r in csv.DictReader(f, delimiter="\t")}
    for a in ("code", "prose"):
        assert (a, "adapter") not in rows  # the adapter through PEFT in bfloat16 is not evaluated by default
        assert float(rows[(a, "reference")][f"ppl:{a}"]) == pytest.approx(ppl[a][a], rel=1e-9)


def test_merge_fidelity_is_measured(demo):
    for a in ("code", "prose"):
        check = json.loads((demo.root / "results" / "checks" / "merge" / f"{a}.json").read_text())["check"]
        assert check["mean_kld"] < 1e-3 and check["top1_agreement"] >= 0.98 and check["dtype"] == "BF16"
        assert metrics(demo, a, "Q4_K_M")["bits_per_weight"] < metrics(demo, a, "Q8_0")["bits_per_weight"]


def test_the_model_chats_through_its_template_and_stops_at_the_end_of_turn(demo):
    """llama-server with a produced GGUF, through the openai client: Paris, then <|im_end|> (finish_reason stop)."""
    from openai import OpenAI

    from loraforge.llamacpp.server import llama_server

    gguf = demo.root / "results" / "gguf" / "prose" / "prose-Q8_0.gguf"
    with llama_server(gguf, n_ctx=1024) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="none")
        reply = client.chat.completions.create(
            model="demo",
            temperature=0,
            max_tokens=60,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
    choice = reply.choices[0]
    assert "Paris" in choice.message.content and choice.finish_reason == "stop", choice


def test_imatrix_quant_is_closer_to_the_model_than_the_plain_one(demo):
    for a in ("code", "prose"):
        plain, imat = metrics(demo, a, "Q4_K_M"), metrics(demo, a, "Q4_K_M-imat")
        assert imat["mean_kld"] < plain["mean_kld"], (a, imat["mean_kld"], plain["mean_kld"])
        side = json.loads((demo.root / "results" / "gguf" / a / f"{a}-Q4_K_M-imat.gguf.json").read_text())
        assert side["imatrix"].endswith(f"{a}.imatrix.gguf") and side["quant_type"] == "Q4_K_M"


def test_fallback_tensors_are_counted(demo):
    """SmolLM2's hidden size, 576, is not a whole number of K-quant blocks (256 values): llama-quantize gives the six
    matrices per layer whose rows are 576 long (q, k, v, o, gate, up) a fallback type in Q4_K_M. Q8_0's 32-value
    blocks fit every row."""
    for a in ("code", "prose"):
        side = {q: json.loads((demo.root / "results" / "gguf" / a / f"{a}-{q}.gguf.json").read_text()) for q in GGUFS}
        assert side["Q4_K_M"]["fallback_tensors"] == 6 * 30 and side["Q8_0"]["fallback_tensors"] == 0


def test_low_bit_types_build_from_the_demo_imatrix(demo, tmp_path):
    from loraforge import quantize

    gguf_dir = demo.root / "results" / "gguf" / "code"
    imatrix = demo.root / "results" / "imatrix" / "code.imatrix.gguf"
    # IQ2_XS needs the matrix (llama-quantize refuses it without one); IQ4_XS from a matrix is the README's own-model
    # config's, built by its test (17 s of llama-quantize here, on SmolLM2's 576-wide rows)
    for qtype in ("Q3_K_M", "Q2_K", "IQ2_XS"):
        out = tmp_path / f"code-{qtype}.gguf"
        quantize(gguf_dir / "code-BF16.gguf", out, qtype, threads=2, imatrix=imatrix)
        assert out.read_bytes()[:4] == b"GGUF"


def test_lora_gguf_form_is_the_merged_model_at_a_fraction_of_the_size(demo):
    for a in ("code", "prose"):
        lora = demo.root / "results" / "lora" / a / f"{a}-lora-F16.gguf"
        check = json.loads(lora.with_name(lora.name + ".json").read_text())["check"]
        assert check["mean_kld"] < 2e-3, check  # bf16 rounding of the merged weights, not a different model
        for t in ("BF16", "Q8_0", "Q4_K_M"):
            merged, form = metrics(demo, a, t), metrics(demo, a, f"lora-{t}")
            assert form["lora_bytes"] < 0.1 * merged["size_bytes"]
            # same model: the LoRA form's error against the float32 reference is the quantization's, not more
            assert form["mean_kld"] < 2 * merged["mean_kld"] + 1e-3, (a, t, form["mean_kld"], merged["mean_kld"])


def test_gguf_metadata_follows_llama_cpp_naming(demo):
    from gguf import GGUFReader

    fields = GGUFReader(demo.root / "results" / "gguf" / "code" / "code-Q4_K_M.gguf").fields
    meta = {k: fields[k].contents() for k in ("general.name", "general.basename", "general.finetune")}
    assert meta == {
        "general.name": "SmolLM2-135M-Instruct code",
        "general.basename": "SmolLM2-135M-Instruct",
        "general.finetune": "code",
    }
    assert (
        GGUFReader(demo.root / "results" / "gguf" / "base" / "base-Q4_K_M.gguf").fields["general.basename"].contents()
        == "SmolLM2-135M-Instruct"
    )


def test_deploy_bundle_points_at_the_files_and_reports_measured_numbers(demo):
    import yaml

    bundle = demo.root / "results" / "deploy" / "code"
    for mf, want in (("Modelfile", ["code-Q4_K_M.gguf"]), ("Modelfile.lora", ["base-Q4_K_M.gguf", "code-lora"])):
        lines = (bundle / mf).read_text().splitlines()
        assert 'PARAMETER stop "<|im_end|>"' in lines and not any(ln.startswith("TEMPLATE") for ln in lines)
        for ln in lines:
            if ln.startswith(("FROM ", "ADAPTER ")):
                assert (bundle / ln.split(" ", 1)[1]).is_file(), ln  # relative to the Modelfile, as Ollama reads it
        assert all(any(w in ln for ln in lines) for w in want)
    card = (bundle / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["license"] == "apache-2.0"
    q4 = metrics(demo, "code", "Q4_K_M")
    assert f"{q4['mean_kld']:.2e}" in card and "lora-Q4_K_M" in card
    ref = q4["texts"]["code"]["ref_ppl"]  # what every row is against, and its own perplexity
    assert f"through PEFT (unmerged) in float32 (its own PPL: code {ref:.3f}," in card


def test_the_shipped_forms_answer_the_demo_prompts_through_their_own_servers(demo):
    """Does it still answer? The deploy bundle's forms (the Q4_K_M GGUF, the LoRA GGUF on the base's Q4_K_M) each
    answer the demo's 12 chat prompts through llama-server with the GGUF's template, against the adapter's own
    answers (PEFT, float32); the other forms answer only on request (evaluation.answer_forms)."""
    for a in ("code", "prose"):
        ref = json.loads((demo.root / "results" / "eval" / a / "answers.json").read_text())
        assert ref["dtype"] == "float32" and len(ref["answers"]) == 12
        for art in ("Q4_K_M", "lora-Q4_K_M"):
            m = metrics(demo, a, art)
            g = m["generation"]
            assert g["engine"].startswith("llama-server") and g["n_prompts"] == 12 and g["scored_prompts"] == 11
            # each shipped GGUF ends its turns about as often as its adapter does (the adapters, trained on raw text,
            # end fewer turns than the instruct base: prose's a third); a 135M model knows some of the answers
            assert abs(m["stop_rate"] - ref["stop_rate"]) <= 0.25, (a, art, m["stop_rate"], ref["stop_rate"])
            assert 0.25 <= m["answer_accuracy"] <= 1.0, (a, art, m["answer_accuracy"])
            lo, hi = g["accuracy_ci95"]
            assert lo <= m["answer_accuracy"] <= hi and m["answers_identical"] is not None
            assert g["prompts_sha256"] == ref["prompts_sha256"]
        assert "generation" not in metrics(demo, a, "Q8_0")  # not shipped: not asked
    card = (demo.root / "results" / "deploy" / "code" / "README.md").read_text()
    assert "### Does it still answer?" in card and "| lora-Q4_K_M | llama-server" in card


def test_llama_server_switches_lora_adapters_on_the_shared_base(demo):
    """llama-server with the base GGUF and both LoRA GGUFs: the template it renders is the HF one, switching adapters
    through /lora-adapters changes the output, and base + code adapter at scale 1 answers as the merged model."""
    from openai import OpenAI
    from transformers import AutoTokenizer

    from loraforge.llamacpp.server import llama_server

    res = demo.root / "results"
    loras = [res / "lora" / a / f"{a}-lora-F16.gguf" for a in ("code", "prose")]
    messages = [{"role": "user", "content": "Write a Python function that reverses a list."}]
    prompt = "def fibonacci(n):\n    "

    def greedy(server, scales=None):
        if scales is not None:
            server.request("/lora-adapters", [{"id": i, "scale": s} for i, s in enumerate(scales)])
        out = server.request(
            "/completion", {"prompt": prompt, "n_predict": 24, "temperature": 0, "cache_prompt": False}
        )
        return out["content"]

    with llama_server(res / "gguf" / "base" / "base-BF16.gguf", loras=loras, n_ctx=1024) as server:
        listed = server.request("/lora-adapters")
        assert [ad["path"] for ad in listed] == [str(p) for p in loras]
        hf = AutoTokenizer.from_pretrained(str(res / "merged" / "code"))
        want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert server.apply_template(messages) == want
        with_code, with_prose, none = greedy(server, [1, 0]), greedy(server, [0, 1]), greedy(server, [0, 0])
        assert len({with_code, with_prose, none}) == 3, (with_code, with_prose, none)
        server.request("/lora-adapters", [{"id": 0, "scale": 1}, {"id": 1, "scale": 0}])
        reply = OpenAI(base_url=server.url + "/v1", api_key="none").chat.completions.create(
            model="base+code", temperature=0, max_tokens=200, messages=messages
        )
        assert reply.choices[0].finish_reason == "stop", reply  # ended by <|im_end|>
    with llama_server(res / "gguf" / "code" / "code-BF16.gguf", n_ctx=1024) as merged:
        assert greedy(merged) == with_code


def test_report_renders_table_and_plots(demo, tmp_path):
    demo.run("--report", "report.html")
    page = (demo.root / "report.html").read_text()
    for name in ("metrics.html", "size_vs_kld.svg", "ppl_by_domain.svg"):
        assert name in page
    table = (demo.root / "results" / "report" / "metrics.html").read_text()
    # header, base, 2 adapters x 10 rows: the reference (the adapter through PEFT, float32), merged, BF16, Q8_0,
    # Q4_K_M, Q4_K_M-imat, and the same four GGUF types as base + LoRA GGUF (a compressed model's rows are make
    # demo-compress's, the GPU-serving forms make demo-vllm's)
    rows = 1 + 1 + 2 * 10
    assert table.count("<tr>") == rows
    assert "base GGUF + LoRA GGUF" in table
    for svg in ("size_vs_kld.svg", "ppl_by_domain.svg"):
        text = (demo.root / "results" / "report" / svg).read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text and "Q4_K_M" in text
    # as a person sees them at 1400 px: the table fits the window, and its rows are there, rendered
    from browser import assert_painted, rendered, screenshot

    seen = rendered(demo.root / "results" / "report" / "metrics.html", tmp_path)
    assert seen["scroll_width"] <= seen["window_width"], seen["scroll_width"]
    assert seen["dom"].count("<tr>") == rows and "prose" in seen["dom"] and "lora-Q4_K_M" in seen["dom"]
    for page_file in (demo.root / "report.html", demo.root / "results" / "report" / "metrics.html"):
        assert_painted(screenshot(page_file, tmp_path / f"{page_file.stem}.png"), 1400, 1000)
