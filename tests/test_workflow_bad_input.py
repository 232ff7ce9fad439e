"""The workflow refuses bad input before any job: one clear line, nothing written."""

from __future__ import annotations

import shutil

import pytest
from conftest import user_config

from loraforge.io.hashing import WORKFLOW_HASH_CACHE


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
    # what a dry run could write: the hash cache of the external inputs, filled while the DAG is built (before any
    # job); refused before that, it is not there; nor are outputs, logs or benchmarks
    assert not (wf.root / WORKFLOW_HASH_CACHE).exists()
    assert not [p for p in ("results", "logs", "benchmarks") if (wf.root / p).exists()]


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


def test_base_problems_are_named_as_the_base(workflow, models, tmp_path):
    f = tmp_path / "base-file"
    f.write_text("not a directory")
    _fails_cleanly(
        workflow(user_config(models, base_model=str(f))),
        f"config base_model: {f}: base model is a file, expected a Hugging Face model directory",
    )


def test_adapter_path_that_is_a_file(workflow, models, tmp_path):
    f = tmp_path / "adapter.safetensors"
    f.write_bytes(b"x")
    cfg = user_config(models)
    cfg["adapters"]["alpha"] = str(f)
    _fails_cleanly(workflow(cfg), f"config adapters.alpha: {f}: adapter is a file, expected a PEFT adapter directory")


def test_config_and_weights_that_disagree_are_refused_even_without_the_merge_check(workflow, models, copy):
    """target_modules names 2 modules, the weights hold 7: PEFT would silently apply only 2 of them."""
    import json

    ad = copy("alpha")
    cfg_file = ad / "adapter_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "target_modules": ["q_proj", "v_proj"]}))
    cfg = user_config(models, merge={"check": False})
    cfg["adapters"]["alpha"] = str(ad)
    _fails_cleanly(
        workflow(cfg),
        "holds LoRA weights for model.layers.0.mlp.down_proj, which target_modules in "
        "adapter_config.json (['q_proj', 'v_proj']) does not name: config and weights disagree",
    )


def test_truncated_adapter_weights(workflow, models, copy):
    ad = copy("alpha")
    w = ad / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-1000])
    cfg = user_config(models)
    cfg["adapters"]["alpha"] = str(ad)
    _fails_cleanly(workflow(cfg), f"config adapters.alpha: {w}: truncated: tensor")


@pytest.mark.parametrize("content, problem", [(b"", "text file is empty"), (b"caf\xe9 latin-1", "not UTF-8 text")])
def test_empty_or_non_utf8_evaluation_text(workflow, models, tmp_path, content, problem):
    t = tmp_path / "eval.txt"
    t.write_bytes(content)
    cfg = user_config(models, evaluation={"texts": {"general": str(t)}})
    _fails_cleanly(workflow(cfg), f"config evaluation.texts.general: {t}: {problem}")


def test_imatrix_only_type_without_imatrix_is_refused(workflow, models):
    wf = workflow(user_config(models, quantize={"types": ["Q8_0", "IQ2_XS"]}))
    _fails_cleanly(wf, "config quantize.types: IQ2_XS needs an importance matrix")


def test_calibration_text_that_is_an_evaluation_text_is_refused(workflow, models):
    imatrix = {"text": str(models["text"]), "types": ["Q4_K_M"]}
    wf = workflow(user_config(models, quantize={"types": ["Q8_0"], "imatrix": imatrix}))
    _fails_cleanly(wf, "overlaps evaluation.texts.general")


def test_adapter_named_base_is_refused(workflow, models):
    wf = workflow(user_config(models, adapters={"base": str(models["alpha"])}))
    _fails_cleanly(wf, "config adapters.base: 'base' names the base model's own GGUFs")


def test_compression_that_drops_every_layer_is_refused(workflow, models, tmp_path):
    cal = tmp_path / "calibration.txt"
    cal.write_text("Calibration text that is not the evaluation text.\n" * 50)
    compress = {"text": str(cal), "specs": {"all": {"drop_layers": 2}}}
    wf = workflow(user_config(models, compress=compress))
    _fails_cleanly(wf, "config compress.specs.all: drop_layers 2 removes all 2 layers")


def test_an_mlp_width_the_quantizer_cannot_block_is_refused(workflow, models, tmp_path):
    """Q4_K_M's blocks are 256 values long: a down projection with rows of 200 would get a fallback type."""
    cal = tmp_path / "calibration.txt"
    cal.write_text("Calibration text that is not the evaluation text.\n" * 50)
    compress = {"text": str(cal), "specs": {"narrow": {"mlp_width": 200}}}
    wf = workflow(user_config(models, quantize={"types": ["Q8_0", "Q4_K_M"]}, compress=compress))
    _fails_cleanly(wf, "config compress.specs.narrow: mlp_width 200 is not a multiple of 256")


def test_adapter_names_that_look_like_each_others_files_get_their_own_paths(workflow, models):
    """Issue 15 #9: `x` and `x.merge` once shared a sidecar. Every artifact of an adapter now lives under a
    directory of its name, so names that extend each other plan distinct outputs."""
    names = {"x": models["alpha"], "x.merge": models["beta"], "x-Q8_0": models["alpha"], "x.imatrix": models["beta"]}
    wf = workflow(user_config(models, adapters={n: str(p) for n, p in names.items()}))
    jobs = wf.planned()
    merged = sorted(w["adapter"] for r, w in jobs if r == "merge_adapter")
    assert merged == sorted(names)
    outputs = [(r, tuple(sorted(w.items()))) for r, w in jobs if r != "all"]
    assert len(outputs) == len(set(outputs))  # no two jobs of a rule with the same wildcards


def test_a_malformed_prompts_line_is_refused_naming_file_and_line(workflow, models, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [{"content": "no role"}]}\n')
    cfg = user_config(models, evaluation={"texts": {"general": str(models["text"])}, "prompts": str(prompts)})
    _fails_cleanly(workflow(cfg), f"config evaluation.prompts: {prompts}:2: message 0 has no role")


def test_an_answer_gate_without_prompts_is_refused(workflow, models):
    evaluation = {"texts": {"general": str(models["text"])}, "gates": {"Q8_0": {"min_stop_rate": 0.9}}}
    _fails_cleanly(
        workflow(user_config(models, evaluation=evaluation)),
        "config evaluation.gates.Q8_0.min_stop_rate: gates the generation checks: set evaluation.prompts",
    )


def test_a_loglikelihood_lm_eval_task_is_refused_before_any_job(workflow, models, tmp_path):
    from conftest import REPO

    data = REPO / "tests" / "data" / "lmeval"
    (tmp_path / "capitals.jsonl").write_bytes((data / "capitals.jsonl").read_bytes())
    task = (data / "capitals_choice.yaml").read_text().replace("tests/data/lmeval/", f"{tmp_path}/")
    (tmp_path / "capitals_choice.yaml").write_text(task)
    tasks = {"include_path": str(tmp_path), "tasks": ["capitals_choice"]}
    evaluation = {"texts": {"general": str(models["text"])}, "lm_eval": tasks}
    _fails_cleanly(
        workflow(user_config(models, evaluation=evaluation)),
        "config evaluation.lm_eval: lm-eval: lm-eval task capitals_choice is a multiple_choice task",
    )
