"""loraforge.workflow.schema_values: --config values read as the schema types them, defaults filled from it."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from loraforge.workflow import ConfigError
from loraforge.workflow.schema_values import coerce_strings, fill_defaults

SCHEMA = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())


@pytest.mark.parametrize("spelling", ["false", "False", "no", "off", "0"])
def test_a_nested_boolean_given_as_a_string_is_read(spelling):
    cfg = coerce_strings({"merge": {"enabled": spelling}, "adapters": {"a": "/x"}}, SCHEMA)
    assert cfg == {"merge": {"enabled": False}, "adapters": {"a": "/x"}}


def test_numbers_and_nulls_are_read_and_strings_stay_strings():
    cfg = coerce_strings(
        {
            "threads": "4",
            "name": "null",  # string or null: a string stays a string
            "evaluation": {"n_ctx": "256", "gates": {"Q8_0": {"max_mean_kld": "0.01"}}},
            "adapters": {"a": [{"path": "/x", "weight": "0.5"}]},
            "quantize": {"types": ["Q8_0"]},
        },
        SCHEMA,
    )
    assert cfg["threads"] == 4 and cfg["name"] == "null" and cfg["evaluation"]["n_ctx"] == 256
    assert cfg["evaluation"]["gates"]["Q8_0"]["max_mean_kld"] == 0.01
    assert cfg["adapters"]["a"][0]["weight"] == 0.5 and cfg["quantize"]["types"] == ["Q8_0"]


def test_typed_values_from_a_config_file_pass_unchanged():
    cfg = {"merge": {"enabled": True}, "threads": 2, "adapters": {"a": "/x"}}
    assert coerce_strings(cfg, SCHEMA) == cfg


def test_an_unreadable_value_names_the_key_and_the_spellings():
    with pytest.raises(ConfigError) as e:
        coerce_strings({"merge": {"enabled": "maybe"}}, SCHEMA)
    assert str(e.value) == "config merge.enabled: 'maybe' is not true or false (also yes/no, on/off, 1/0)"
    with pytest.raises(ConfigError, match=r"config threads: 'four' is not an integer"):
        coerce_strings({"threads": "four"}, SCHEMA)


def test_a_section_that_may_be_null_takes_its_defaults_from_the_schema():
    cfg = fill_defaults({"quantize": {"imatrix": {"text": "c.txt", "types": ["Q4_K_M"]}}, "hf_quant": None}, SCHEMA)
    assert cfg["quantize"]["imatrix"] == {"text": "c.txt", "types": ["Q4_K_M"], "n_ctx": 512, "chunks": 100}
    assert cfg["hf_quant"] is None  # absent stays absent
    hfq = fill_defaults({"hf_quant": {"text": "c.txt", "schemes": ["AWQ-W4A16"], "samples": 8}}, SCHEMA)["hf_quant"]
    assert hfq == {
        "text": "c.txt",
        "schemes": ["AWQ-W4A16"],
        "samples": 8,  # given: kept
        "group_size": None,
        "seq_len": 512,
        "multi_lora": True,
        "vllm": False,
        "vllm_max_minutes": 30,
    }


def test_no_default_is_written_in_code_that_the_schema_does_not_give():
    """Every x-default the workflow relies on is in the schema, once."""

    def defaults(node, where=""):
        if isinstance(node, dict):
            found = [where] if "x-default" in node else []
            return found + [d for k, v in node.items() for d in defaults(v, f"{where}.{k}")]
        return []

    assert sorted(defaults(SCHEMA)) == sorted(
        [".properties.quantize.properties.imatrix.properties." + k for k in ("n_ctx", "chunks")]
        + [
            ".properties.hf_quant.properties." + k
            for k in ("group_size", "samples", "seq_len", "multi_lora", "vllm", "vllm_max_minutes")
        ]
        + [".properties.compress.properties." + k for k in ("n_ctx", "max_tokens")]
        + [".properties.evaluation.properties.lm_eval.properties.limit"]
    )
    for path in ("src/loraforge/workflow/plan.py", "rules/quantize.smk", "rules/compress.smk"):
        code = (REPO / path).read_text()
        assert '"samples": 16' not in code and 'get("n_ctx", 512)' not in code, path
        assert 'get("n_ctx", 256)' not in code and 'get("max_tokens", 4096)' not in code, path
