"""loraforge.preflight: bad input fails from headers and JSON alone, with one line naming the file and the problem."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import make_adapter
from safetensors.torch import load_file, save_file

from loraforge.errors import PipelineError
from loraforge.preflight import validate_inputs


@pytest.fixture
def copy(models, tmp_path):
    def make(name):
        return shutil.copytree(models[name], tmp_path / name)

    return make


def test_adapter_without_config(models, copy):
    ad = copy("alpha")
    (ad / "adapter_config.json").unlink()
    with pytest.raises(PipelineError, match=r"adapter_config.json: missing"):
        validate_inputs(models["base"], [ad])


def test_adapter_without_weights(models, copy):
    ad = copy("alpha")
    (ad / "adapter_model.safetensors").unlink()
    with pytest.raises(PipelineError, match=r"adapter_model.safetensors: missing"):
        validate_inputs(models["base"], [ad])


def test_adapter_shape_mismatch(models, copy):
    ad = copy("alpha")
    t = load_file(ad / "adapter_model.safetensors")
    key = next(k for k in t if k.endswith("q_proj.lora_B.weight"))
    t[key] = t[key][:100]
    save_file(t, ad / "adapter_model.safetensors")
    with pytest.raises(PipelineError, match=r"q_proj: adapter shape \(100, 256\) does not match base weight"):
        validate_inputs(models["base"], [ad])


def test_adapter_targets_missing_module(models, copy):
    ad = copy("alpha")
    t = load_file(ad / "adapter_model.safetensors")
    t = {k.replace("layers.1.", "layers.7."): v for k, v in t.items()}
    save_file(t, ad / "adapter_model.safetensors")
    with pytest.raises(PipelineError, match=r"targets module model.layers.7.\S+, which the base model does not have"):
        validate_inputs(models["base"], [ad])


def test_non_lora_adapter_is_refused(models, copy):
    ad = copy("alpha")
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["peft_type"] = "IA3"
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(PipelineError, match=r"peft_type 'IA3' is not supported"):
        validate_inputs(models["base"], [ad])


def test_base_missing_or_without_config(models, tmp_path):
    with pytest.raises(PipelineError, match=r"base model directory does not exist"):
        validate_inputs(tmp_path / "nope", [models["alpha"]])
    base = shutil.copytree(models["base"], tmp_path / "base")
    (base / "config.json").unlink()
    with pytest.raises(PipelineError, match=r"config.json: missing"):
        validate_inputs(base, [models["alpha"]])


def test_quantized_base_is_refused(models, tmp_path):
    base = shutil.copytree(models["base"], tmp_path / "base")
    cfg = json.loads((base / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PipelineError, match=r"base model is quantized \(bitsandbytes\)"):
        validate_inputs(base, [models["alpha"]])


def test_adapter_for_other_base_is_refused(models, tmp_path):
    from conftest import make_llama

    other = make_llama(tmp_path / "other", hidden=512, inter=512, layers=1)
    ad = make_adapter(other, tmp_path / "otherad", r=4)
    with pytest.raises(PipelineError, match=r"does not match base weight"):
        validate_inputs(models["base"], [ad])


def test_base_without_tokenizer_is_one_line(models, tmp_path):
    base = shutil.copytree(models["base"], tmp_path / "base")
    for f in base.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(PipelineError, match=r"base: no tokenizer \(tokenizer.json, tokenizer.model, or vocab.json"):
        validate_inputs(base, [models["alpha"]])


def test_tokenizer_larger_than_the_embedding_is_one_line(models, tmp_path):
    from conftest import make_llama

    small = make_llama(tmp_path / "small", vocab=1000, hidden=256, inter=256, layers=1)
    ad = make_adapter(small, tmp_path / "ad", r=4)
    with pytest.raises(
        PipelineError,
        match=r"small/tokenizer.json: tokenizer has ids up to 31999, but the model's "
        r"embedding has only 1000 rows",
    ):
        validate_inputs(small, [ad])


def test_unreadable_tokenizer_is_one_line(models, tmp_path):
    base = shutil.copytree(models["base"], tmp_path / "base")
    (base / "tokenizer.json").write_text("{not json")
    with pytest.raises(PipelineError, match=r"base/tokenizer.json: unreadable tokenizer"):
        validate_inputs(base, [models["alpha"]])
