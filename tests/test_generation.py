"""Does it still answer? The generation checks on a real chat model (SmolLM2-135M-Instruct, the demo's base):
reference answers through PEFT in float32, a GGUF through llama-server with the template it carries, the HF model
through transformers, and a GGUF whose template was swapped for another model's caught by its stop rate gate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import make_adapter

from loraforge.errors import PipelineError

pytestmark = pytest.mark.slow  # a minute: a real model answers through three engines

N_PROMPTS, ANSWER_TOKENS = 6, 96  # the demo's first six prompts: code and Python docs

# the template of GGUFs exported with another model's format (unsloth#1135, LLaMA-Factory#6020): no ChatML
# end-of-turn marker anywhere, so a ChatML model is never shown where a turn ends
ALPACA = (
    "{% for message in messages %}{% if message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}### Response:\n{{ message['content'] }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat(tmp_path_factory, smollm2):
    """SmolLM2's Q4_1 GGUF (from PyPI), its HF import, an adapter that changes nothing (so every difference in the
    answers is the artifact's), the demo's first prompts and the adapter's reference answers."""
    from loraforge.demo.prompts import PROMPTS
    from loraforge.evaluation.generation import reference_answers

    root = tmp_path_factory.mktemp("chat")
    gguf, base = smollm2["gguf"], smollm2["base"]
    adapter = make_adapter(base, root / "adapter", r=8, std=0.0)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS[:N_PROMPTS]))
    text = root / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    answers = root / "answers.json"
    adapters = [{"path": str(adapter), "weight": 1.0}]
    record = reference_answers(base, adapters, prompts, answers, ANSWER_TOKENS)
    return {"root": root, "gguf": gguf, "base": base, "answers": answers, "record": record, "text": text}


def _evaluate(chat, out, **kw):
    from loraforge.evaluation import evaluate_artifact

    kw.setdefault("texts", {"general": str(chat["text"])})
    kw.setdefault("base_dir", chat["base"])  # the tokenizer of the text without a reference
    return evaluate_artifact(out, label=f"demo/{out.stem}", answers=chat["answers"], n_ctx=64, max_tokens=64, **kw)


def test_reference_answers_are_the_adapters_own_through_its_chat_template(chat):
    rec = chat["record"]
    assert rec["dtype"] == "float32" and rec["max_tokens"] == ANSWER_TOKENS
    assert [p["id"] for p in rec["prompts"]] == [a["id"] for a in rec["answers"]]
    assert len(rec["answers"]) == N_PROMPTS
    # an instruct model through its own template: it ends its turns, and its answers are on topic
    assert rec["stop_rate"] >= 5 / 6, rec["answers"]
    assert all(a["text"] and "<|im_start|>" not in a["text"] for a in rec["answers"])
    assert rec["scored_prompts"] == N_PROMPTS and rec["accuracy"] >= 0.5
    lo, hi = rec["accuracy_ci95"]
    assert lo <= rec["accuracy"] <= hi


def test_a_gguf_answers_through_llama_server_with_its_own_template(chat, tmp_path):
    m = _evaluate(chat, tmp_path / "Q4_1.json", kind="gguf", path=chat["gguf"], gates={"min_stop_rate": 0.8})
    g = m.generation
    assert g["engine"].startswith("llama-server") and "--jinja" in g["template"]
    assert m.stop_rate == g["stop_rate"] >= 5 / 6
    assert m.answer_accuracy == g["accuracy"] and m.answers_identical == g["identical_to_reference"]
    # the Q4_1 GGUF against the float32 model it came from: greedy answers agree for a while, if not to the end
    assert g["mean_common_prefix_tokens"] >= 3
    assert g["tokens_per_second"] > 0 and len(g["answers"]) == N_PROMPTS
    saved = json.loads((tmp_path / "Q4_1.json").read_text())
    assert saved["stop_rate"] == m.stop_rate and saved["generation"]["answers"][0]["id"] == "code-def"


def test_the_hf_model_answers_through_transformers_with_the_tokenizers_template(chat, tmp_path):
    m = _evaluate(chat, tmp_path / "merged.json", kind="hf", path=chat["base"])
    g = m.generation
    assert g["engine"].startswith("transformers") and "tokenizer" in g["template"]
    assert m.stop_rate >= 5 / 6
    # bfloat16 (or float32 where the CPU has no bfloat16) against float32: the first tokens agree
    assert g["mean_common_prefix_tokens"] >= 3


def test_a_gguf_carrying_another_models_template_fails_its_stop_rate_gate(chat, tmp_path):
    broken = tmp_path / "alpaca.gguf"
    (tmp_path / "alpaca.jinja").write_text(ALPACA)
    cmd = [
        sys.executable,
        "-m",
        "gguf.scripts.gguf_new_metadata",
        "--chat-template-file",
        str(tmp_path / "alpaca.jinja"),
    ]
    subprocess.run([*cmd, str(chat["gguf"]), str(broken)], check=True, capture_output=True)
    out = tmp_path / "broken.json"
    with pytest.raises(
        PipelineError, match=r"demo/broken: quality gate failed: stop_rate = 0\.[0-6]\d*, min_stop_rate = 0\.8"
    ):
        _evaluate(chat, out, kind="gguf", path=broken, gates={"min_stop_rate": 0.8})
    assert not out.exists()
