"""loraforge.registry.cli: the loraforge-registry command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_registry import artifact

from loraforge.registry import Registry
from loraforge.registry.cli import main as cli

METRICS = {
    "label": "code/Q4_K_M",
    "artifact": "x.gguf",
    "kind": "gguf",
    "n_ctx": 64,
    "texts": {},
    "scored_tokens": 100,
    "eval_seconds": 1.0,
    "load_seconds": 1.0,
    "mean_kld": 0.002,
    "top1_agreement": 0.95,
}


def test_cli_commands(tmp_path, capsys):
    db = str(tmp_path / "reg.sqlite")
    reg = Registry(db)
    for i in range(2):
        reg.register(
            "code",
            {"model": artifact(tmp_path, f"{i}.gguf")},
            "Q4_K_M",
            {"tools": {"torch": "x"}},
            {"evaluation": METRICS},
        )
    assert cli(["--registry", db, "promote", "code", "1", "production"]) == 0
    assert cli(["--registry", db, "promote", "code", "2", "production"]) == 0
    capsys.readouterr()
    assert cli(["--registry", db, "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:6] == ["NAME", "VERSION", "QUANT", "ALIASES", "MEAN_KLD", "TOP1"]
    assert "production" in out and "0.002" in out and "0.9500" in out
    assert cli(["--registry", db, "--json", "latest", "code", "--alias", "production"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2
    assert cli(["--registry", db, "rollback", "code", "production"]) == 0
    assert "rolled back to v1" in capsys.readouterr().out
    assert cli(["--registry", db, "--json", "history", "code"]) == 0
    assert [h["action"] for h in json.loads(capsys.readouterr().out)] == ["promote", "promote", "rollback"]
    assert cli(["--registry", db, "--json", "show", "code", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["lineage"]["tools"] == {"torch": "x"} and shown["aliases"] == ["production"]
    assert cli(["--registry", db, "rollback", "code", "production"]) == 1
    assert "no earlier version" in capsys.readouterr().err
    # the console script is installed and works the same
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("loraforge-registry")), "--registry", db, "list"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "code" in proc.stdout
