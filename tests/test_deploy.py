"""loraforge.deploy: Ollama Modelfiles that point at the built GGUFs, and a model card with measured numbers."""

from __future__ import annotations

import json

import pytest
import yaml

from bench.families import FAMILIES, build_tokenizer, template
from loraforge.deploy import deploy_bundle, modelfile, stop_tokens, template_family
from loraforge.errors import PipelineError


def test_template_families_ollama_recognizes():
    assert template_family(template("meta-llama-Llama-3.1-8B-Instruct.jinja")) == "Llama 3"
    assert template_family(template("Qwen-Qwen2.5-7B-Instruct.jinja")) == "ChatML"
    assert template_family(template("microsoft-Phi-3.5-mini-instruct.jinja")) == "Phi-3"
    assert template_family("{{ messages[0].content }}") is None and template_family(None) is None


def test_stop_tokens_are_the_end_of_turn_tokens(tmp_path):
    build_tokenizer(FAMILIES["llama3"], tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128009]}))
    assert stop_tokens(tmp_path) == ["<|end_of_text|>", "<|eot_id|>"]


def test_modelfile_for_an_unknown_template_warns_instead_of_guessing(tmp_path, caplog):
    text = modelfile(tmp_path, tmp_path / "m.gguf", ["</s>"], "{{ messages[0].content }}", title="t")
    assert "TEMPLATE" not in text.replace("add a TEMPLATE", "") and "may not recognize" in text
    assert 'PARAMETER stop "</s>"' in text and "FROM m.gguf" in text
    assert any("no family Ollama recognizes" in r.message for r in caplog.records)


def test_bundle_of_a_tiny_model(models, f16_gguf, tmp_path):
    out = tmp_path / "deploy" / "alpha"
    s = deploy_bundle(
        out,
        "alpha",
        "tiny",
        "F16",
        f16_gguf,
        models["base"],
        models["base"],
        [models["alpha"]],
        base_gguf=f16_gguf,
        lora_gguf=f16_gguf,
        license_="mit",
    )
    mf = (out / "Modelfile").read_text()
    assert f"FROM {__import__('os').path.relpath(f16_gguf, out)}" in mf and 'PARAMETER stop "</s>"' in mf
    lora_mf = (out / "Modelfile.lora").read_text()
    assert "ADAPTER" in lora_mf
    # which Ollama accepts ADAPTER, and the route for one that refuses it, in the file and in the card
    assert "0.34.0 and earlier accept ADAPTER" in lora_mf and "ollama/ollama#14969" in lora_mf
    assert "create from `Modelfile`" in lora_mf and "--lora" in lora_mf
    assert "ADAPTER" not in mf  # the merged form needs no note
    card = (out / "README.md").read_text()
    assert "0.34.0\nor earlier" in card or "0.34.0 or earlier" in card.replace("\n", " ")
    assert "ollama/ollama#14969" in card
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "mit" and "gguf" in front["tags"] and "base_model" not in front  # a local path
    assert "No quality numbers" in card and s["forms"] == ["merged", "lora"]
    with pytest.raises(PipelineError, match="does not exist"):
        deploy_bundle(tmp_path / "d2", "a", "n", "F16", tmp_path / "none.gguf", models["base"], models["base"], [])
    assert not (tmp_path / "d2").exists()
