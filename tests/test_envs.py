"""envs/loraforge.yaml, the conda env of every rule (--software-deployment-method conda), stays pyproject.toml's
dependencies: a package added to one and not the other fails here."""

from __future__ import annotations

import tomllib
import yaml
from conftest import REPO


def test_conda_env_lists_exactly_the_package_dependencies():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "envs" / "loraforge.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == [*deps, "-e .."]
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.10" and python == "python=3.11"
