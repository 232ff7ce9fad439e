"""The public API exactly as the README documents it: every ```python block of the README runs here."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO


def readme_blocks(lang: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_the_package_exports_functions_not_modules():
    import loraforge

    for name in loraforge.__all__:
        obj = getattr(loraforge, name)
        assert not isinstance(obj, type(os)), f"loraforge.{name} is a module"
    # importing every stage's subpackage does not rebind the public names
    import loraforge.conversion
    import loraforge.evaluation
    import loraforge.merging
    import loraforge.quantization
    import loraforge.registry  # noqa: F401

    assert callable(loraforge.merge) and callable(loraforge.convert) and callable(loraforge.quantize)


def test_importing_the_package_loads_neither_torch_nor_llama_cpp():
    """Nor does what the workflow imports to build its DAG, in every Snakemake process and every cluster job."""
    code = (
        "import sys, loraforge, loraforge.demo, loraforge.preflight, loraforge.io.hashing\n"
        "print(sorted(m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("block", readme_blocks("python"), ids=lambda b: b.splitlines()[0][:40])
def test_readme_python_snippet_runs_as_documented(block, models, tmp_path, monkeypatch):
    """Run in a directory holding what the snippet names: base/, adapter/ and heldout.txt."""
    (tmp_path / "base").symlink_to(models["base"])
    (tmp_path / "adapter").symlink_to(models["alpha"])
    (tmp_path / "heldout.txt").symlink_to(models["text"])
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - the documented snippet itself
    for made in re.findall(r'"([\w./-]+\.(?:gguf|safetensors))"', block):
        assert (tmp_path / made).is_file(), made
    measured = [v for v in scope.values() if type(v).__name__ == "Metrics"]
    assert measured or "evaluate(" not in block, "the snippet evaluates but left no Metrics"
    for value in measured:  # what the snippet measured is real
        assert 0 < value.mean_kld < 1 and 0 < value.top1_agreement <= 1 and value.scored_tokens > 100
