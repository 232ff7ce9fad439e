"""loraforge.registry.cli: the loraforge-registry command, as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_registry import artifact, lineage

from loraforge.errors import PipelineError
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
EXE = str(Path(sys.executable).with_name("loraforge-registry"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """A registry with two versions, on each backend: the CLI takes a file or a URL alike."""
    if request.param == "sqlite":
        db, store = str(tmp_path / "reg.sqlite"), None
    else:
        db, store = request.getfixturevalue("postgres").new_database(), tmp_path / "store"
    reg = Registry(db, store_dir=store)
    for i in range(2):
        reg.register(
            "code",
            {**lineage(f"r{i}"), "tools": {"torch": "x"}},
            "gguf",
            "Q4_K_M",
            artifact(tmp_path, f"{i}.gguf"),
            {"evaluation": METRICS},
        )
    return db


def test_cli_commands(db, capsys):
    assert cli(["--registry", db, "promote", "code", "1", "production"]) == 0
    assert cli(["--registry", db, "promote", "code", "2", "production"]) == 0
    capsys.readouterr()
    assert cli(["--registry", db, "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:8] == [
        "NAME",
        "VERSION",
        "ALIASES",
        "KIND",
        "VARIANT",
        "SIZE_MB",
        "MEAN_KLD",
        "TOP1",
    ]
    assert "production" in out and "0.002" in out and "0.9500" in out
    assert cli(["--registry", db, "latest", "code", "--alias", "production", "--quant", "Q4_K_M"]) == 0
    path = capsys.readouterr().out.strip()
    assert Path(path).read_bytes() == b"1.gguf" * 100 and "store/sha256/" in path
    assert cli(["--registry", db, "rollback", "code", "production"]) == 0
    assert "rolled back to v1" in capsys.readouterr().out
    # --json after the subcommand, as users write it
    assert cli(["--registry", db, "history", "code", "--json"]) == 0
    assert [h["action"] for h in json.loads(capsys.readouterr().out)] == ["promote", "promote", "rollback"]
    assert cli(["show", "code", "1", "--registry", db, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["lineage"]["tools"] == {"torch": "x"} and shown["aliases"] == ["production"]
    assert cli(["--registry", db, "tag", "code", "1", "dataset", "v7"]) == 0
    assert cli(["--registry", db, "rollback", "code", "production"]) == 1
    assert "no earlier version" in capsys.readouterr().err


def test_unknown_names_and_bad_aliases_exit_1_with_one_line(db, capsys):
    for args in (
        ["history", "nosuch"],
        ["latest", "nosuch", "--quant", "Q8_0"],
        ["list", "nosuch"],
        ["promote", "code", "1", ""],
        ["promote", "code", "1", "../prod"],
    ):
        assert cli(["--registry", db, *args]) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


def test_a_mistyped_registry_path_is_not_created_for_reading(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LORAFORGE_REGISTRY", str(tmp_path / "tpyo" / "registry.sqlite"))
    reads_and_writes = (
        ["list"],
        ["history", "code"],
        ["verify"],
        ["promote", "code", "1", "prod"],
        ["tag", "c", "1", "k", "v"],
    )
    for args in reads_and_writes:
        assert cli(args) == 1
        assert "no registry there ($LORAFORGE_REGISTRY)" in capsys.readouterr().err
    assert not (tmp_path / "tpyo").exists()


EVERY_COMMAND = (
    ["list"],
    ["show", "code", "1"],
    ["latest", "code", "--quant", "Q8_0"],
    ["promote", "code", "1", "production"],
    ["rollback", "code", "production"],
    ["history", "code"],
    ["tag", "code", "1", "k", "v"],
    ["verify"],
    ["compare", "code", "1", "2", "--quant", "Q8_0", "--text", "t=/nonexistent.txt"],
    ["dashboard", "out.html"],
)


def test_a_file_that_is_not_a_registry_is_refused_and_left_byte_for_byte(tmp_path, capsys):
    """Another program's SQLite database (rollback journal, as SQLite's default) and an empty file: every command
    refuses them in one line, and neither the file nor its directory changes (no WAL switch, no -journal)."""
    import sqlite3

    other = tmp_path / "app.sqlite"
    c = sqlite3.connect(other)
    c.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    c.execute("INSERT INTO notes (body) VALUES ('mine')")
    c.commit()
    c.close()
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    for path, why in ((other, "a SQLite database that is not a loraforge registry"), (empty, "an empty file")):
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        for args in EVERY_COMMAND:
            assert cli(["--registry", str(path), *args]) == 1, args
            err = capsys.readouterr().err
            assert why in err and len(err.strip().splitlines()) == 1, (args, err)
        with pytest.raises(PipelineError, match=why):
            Registry(path)  # what a registration opens
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, path


def test_piped_into_head_no_traceback(db, tmp_path):
    reg = Registry(db)
    for i in range(120):  # more output than a pipe holds, so the writer meets the closed pipe
        reg.register(
            "many", lineage(f"m{i}"), "gguf", "Q8_0", artifact(tmp_path, f"m{i}.gguf"), {"evaluation": METRICS}
        )
    proc = subprocess.run(
        f"set -o pipefail; {EXE} --registry {db} list --json | head -1",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
    )
    assert proc.stdout.strip() == "[" and "Traceback" not in proc.stderr and proc.returncode == 0, proc.stderr


def test_verify_reports_changed_files(db, capsys):
    reg = Registry(db)
    path = Path(reg.get("code", 2).artifact("Q4_K_M").store_path)
    path.chmod(0o644)
    path.write_bytes(b"tampered")
    assert cli(["--registry", db, "verify"]) == 1
    out = capsys.readouterr()
    assert "changed" in out.out and "1 registered file(s) missing or changed" in out.err
    proc = subprocess.run([EXE, "--registry", db, "list"], capture_output=True, text=True)
    assert proc.returncode == 0 and "code" in proc.stdout  # the console script is installed and works the same
