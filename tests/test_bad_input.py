"""Bad input: one clear line naming the file and the problem, before any heavy work, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import make_adapter, user_config
from safetensors.torch import load_file, save_file

from loraforge.errors import PipelineError
from loraforge.merge import validate_inputs


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


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "", "-x", "a b", "x" * 129])
def test_unsafe_adapter_names_are_rejected_by_the_schema(name):
    import re

    import yaml
    from conftest import REPO

    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    pattern = schema["properties"]["adapters"]["propertyNames"]["pattern"]
    assert not re.search(pattern, name)
    assert re.search(pattern, "support-v7.1_final")


def _fails_cleanly(wf, needle):
    proc = wf.run("-n", check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert needle in text, text[-3000:]
    assert "Traceback" not in text
    assert not (wf.root / "results").exists() and not (wf.root / "logs").exists()


def test_workflow_rejects_bad_adapter_before_any_job(workflow, models, copy):
    ad = copy("alpha")
    (ad / "adapter_model.safetensors").unlink()
    cfg = user_config(models)
    cfg["adapters"]["alpha"] = str(ad)
    _fails_cleanly(workflow(cfg), f"{ad}/adapter_model.safetensors: missing")


def test_workflow_rejects_unknown_quant_type(workflow, models):
    _fails_cleanly(workflow(user_config(models, quantize={"types": ["Q4_K_X"]})), "Q4_K_X")


def test_workflow_rejects_unsafe_adapter_name(workflow, models):
    cfg = user_config(models)
    cfg["adapters"] = {"../x": str(models["alpha"])}
    _fails_cleanly(workflow(cfg), "../x")


def test_workflow_rejects_missing_base(workflow, models, tmp_path):
    _fails_cleanly(workflow(user_config(models, base_model=str(tmp_path / "missing"))),
                   f"{tmp_path / 'missing'}: base model directory does not exist")


def test_adapter_for_other_base_is_refused(models, tmp_path):
    from conftest import make_llama

    other = make_llama(tmp_path / "other", hidden=512, inter=512, layers=1)
    ad = make_adapter(other, tmp_path / "otherad", r=4)
    with pytest.raises(PipelineError, match=r"does not match base weight"):
        validate_inputs(models["base"], [ad])
