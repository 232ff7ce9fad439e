"""loraforge.workflow.cli_values: values Snakemake's --config hands over as strings, read as the schema types them."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from loraforge.workflow import ConfigError
from loraforge.workflow.cli_values import coerce_strings

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
