"""The workflow refuses bad input before any job: one clear line, nothing written."""

from __future__ import annotations

import shutil

import pytest
from conftest import user_config


@pytest.fixture
def copy(models, tmp_path):
    def make(name):
        return shutil.copytree(models[name], tmp_path / name)

    return make


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
    _fails_cleanly(
        workflow(user_config(models, base_model=str(tmp_path / "missing"))),
        f"{tmp_path / 'missing'}: base model directory does not exist",
    )
