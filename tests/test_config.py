"""The configs that ship: the schema accepts the demo and the example, and fills in every default."""

from __future__ import annotations

import yaml
from conftest import REPO
from snakemake.utils import validate


def test_shipped_configs_are_valid_and_defaults_come_from_the_schema():
    schema = str(REPO / "schemas" / "config.schema.yaml")
    for name in ("demo.yaml", "example.yaml"):
        cfg = yaml.safe_load((REPO / "config" / name).read_text())
        validate(cfg, schema)
        assert cfg["merge"]["method"] == "streaming" and cfg["registry"]["path"] == "registry.sqlite"
        assert cfg["evaluation"]["batch"] == 8 and cfg["threads"] == 2 and cfg["llama_cpp_dir"] is None
