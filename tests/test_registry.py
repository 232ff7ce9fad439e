"""loraforge.registry.store: versions, aliases, rollback, concurrency, crash safety, bad files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from loraforge.errors import PipelineError
from loraforge.registry import Registry, get_latest, register_model, rollback_model
from loraforge.registry.cli import main as cli
from loraforge.registry.store import SCHEMA_VERSION


def artifact(tmp_path: Path, name: str, content: bytes | None = None) -> Path:
    p = tmp_path / name
    p.write_bytes(content if content is not None else name.encode() * 100)
    return p


@pytest.fixture
def reg(tmp_path):
    r = Registry(tmp_path / "reg.sqlite")
    yield r
    r.close()


def test_versions_are_monotonic_and_registration_is_idempotent(reg, tmp_path):
    a = artifact(tmp_path, "a.gguf")
    v1, created = reg.register("code", {"model": a}, "Q8_0", {"base": "x"}, {"mean_kld": 0.01})
    assert (v1.version, created) == (1, True)
    again, created = reg.register("code", {"model": a}, "Q8_0")
    assert (again.version, created) == (1, False)
    v2, _ = reg.register("code", {"model": artifact(tmp_path, "b.gguf")}, "Q4_K_M")
    assert v2.version == 2
    other, _ = reg.register("prose", {"model": a}, "Q8_0")
    assert other.version == 1  # per name
    assert [v.version for v in reg.versions("code")] == [1, 2]
    assert reg.get("code", 1).metrics == {"mean_kld": 0.01} and reg.get("code", 1).lineage == {"base": "x"}
    f = reg.get("code", 1).files["model"]
    assert f["size"] == a.stat().st_size and len(f["sha256"]) == 64
    assert reg.schema_version() == SCHEMA_VERSION


def test_aliases_promote_latest_rollback_history(reg, tmp_path):
    for i in range(3):
        reg.register("code", {"model": artifact(tmp_path, f"{i}.gguf")}, "Q8_0")
    assert reg.get_latest("code").version == 3
    reg.promote("code", 1, "production")
    reg.promote("code", 2, "production")
    reg.promote("code", 3, "production")
    assert reg.get_latest("code", alias="production").version == 3
    assert reg.rollback("code", "production").version == 2
    assert reg.rollback("code", "production").version == 1  # undo stack: back again
    with pytest.raises(PipelineError, match="no earlier version"):
        reg.rollback("code", "production")
    assert reg.get_latest("code", alias="production").version == 1
    hist = reg.history("code", "production")
    assert [(h["action"], h["previous_version"], h["version"]) for h in hist] == [
        ("promote", None, 1),
        ("promote", 1, 2),
        ("promote", 2, 3),
        ("rollback", 3, 2),
        ("rollback", 2, 1),
    ]
    assert reg.get("code", 1).aliases == ("production",)


def test_rollback_errors(reg, tmp_path):
    reg.register("code", {"model": artifact(tmp_path, "a.gguf")}, "Q8_0")
    with pytest.raises(PipelineError, match="has no alias 'production' to roll back"):
        reg.rollback("code", "production")
    reg.promote("code", 1, "production")
    with pytest.raises(PipelineError, match="cannot roll back 'code' alias 'production': no earlier version"):
        reg.rollback("code", "production")
    with pytest.raises(PipelineError, match="no version 7"):
        reg.promote("code", 7, "staging")


def test_module_level_default_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFORGE_REGISTRY", str(tmp_path / "default.sqlite"))
    register_model("code", {"model": artifact(tmp_path, "a.gguf")}, "Q8_0")
    v2 = register_model("code", {"model": artifact(tmp_path, "b.gguf")}, "Q8_0")
    Registry(tmp_path / "default.sqlite").promote("code", 1, "production")
    Registry(tmp_path / "default.sqlite").promote("code", 2, "production")
    assert get_latest("code").version == v2.version == 2
    assert rollback_model("code", "production").version == 1
    assert (tmp_path / "default.sqlite").exists()


WRITER = textwrap.dedent("""
    import sys, time
    from loraforge.registry import Registry
    path, art, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
    while time.time() < start:
        time.sleep(0.001)
    v, created = Registry(path).register("code", {"model": art}, "Q8_0")
    print(v.version, int(created))
""")


def test_sixteen_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    db = tmp_path / "reg.sqlite"  # not created beforehand: the writers race to create it too
    arts = [artifact(tmp_path, f"m{i}.gguf") for i in range(12)] + [tmp_path / "m0.gguf"] * 4  # 4 duplicates
    start = time.time() + 3
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(a), str(start)], stdout=subprocess.PIPE, text=True)
        for a in arts
    ]
    results = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    created = sorted(int(v) for v, c in results if c == "1")
    assert created == list(range(1, 13))  # 12 distinct artifacts: versions 1..12, none lost, none twice
    dup_versions = {int(v) for (v, c), a in zip(results, arts, strict=True) if a.name == "m0.gguf"}
    assert len(dup_versions) == 1  # the 5 registrations of m0 all got the same version
    reg = Registry(db)
    assert [v.version for v in reg.versions("code")] == list(range(1, 13))
    assert reg.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


KILLED = textwrap.dedent("""
    import sys, time
    from loraforge.registry import Registry
    reg = Registry(sys.argv[1])
    with reg._write() as c:
        c.execute("INSERT INTO versions (name, version, quant_type, content_sha256, lineage, metrics, created_at)"
                  " VALUES ('code', 99, 'Q8_0', 'x', '{}', '{}', 'now')")
        print("in transaction", flush=True)
        time.sleep(60)
""")


def test_writer_killed_mid_transaction_leaves_database_consistent(tmp_path):
    db = tmp_path / "reg.sqlite"
    reg = Registry(db)
    reg.register("code", {"model": artifact(tmp_path, "a.gguf")}, "Q8_0")
    p = subprocess.Popen([sys.executable, "-c", KILLED, str(db)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "in transaction"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    reg2 = Registry(db)
    assert reg2.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [v.version for v in reg2.versions("code")] == [1]
    v, _ = reg2.register("code", {"model": artifact(tmp_path, "b.gguf")}, "Q8_0")  # the lock was released
    assert v.version == 2


def test_non_sqlite_file_is_refused_and_not_overwritten(tmp_path):
    bad = tmp_path / "reg.sqlite"
    bad.write_bytes(b"this is my precious notes file, not a database\n" * 10)
    before = bad.read_bytes()
    with pytest.raises(PipelineError, match="not a SQLite database; refusing to use or overwrite it"):
        Registry(bad)
    assert bad.read_bytes() == before
    assert cli(["--registry", str(bad), "list"]) == 1


def test_corrupted_sqlite_file_is_refused_and_not_overwritten(tmp_path):
    db = tmp_path / "reg.sqlite"
    reg = Registry(db)
    reg.register("code", {"model": artifact(tmp_path, "a.gguf")}, "Q8_0")
    reg.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    reg.close()
    raw = bytearray(db.read_bytes())
    raw[16:100] = b"\xff" * 84  # smash the header after the magic
    db.write_bytes(bytes(raw))
    with pytest.raises(PipelineError, match="not a usable loraforge registry"):
        Registry(db)
    assert db.read_bytes() == bytes(raw)


def test_foreign_sqlite_database_is_left_untouched(tmp_path):
    db = tmp_path / "other.sqlite"
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE customers (id INTEGER)")
    c.commit()
    c.close()
    with pytest.raises(PipelineError, match="not a loraforge registry; left untouched"):
        Registry(db)
    tables = [r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")]
    assert tables == ["customers"]


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "reg.sqlite"
    Registry(db).conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(PipelineError, match="schema 99 is newer"):
        Registry(db)


def test_verify_reports_deleted_and_changed_files(tmp_path, capsys):
    db = tmp_path / "reg.sqlite"
    a, b, c = (artifact(tmp_path, f"{n}.gguf") for n in "abc")
    reg = Registry(db)
    for f in (a, b, c):
        reg.register("code", {"model": f}, "Q8_0")
    a.unlink()
    b.write_bytes(b"tampered")
    status = {Path(r["path"]).name: r["status"] for r in reg.verify()}
    assert status == {"a.gguf": "missing", "b.gguf": "changed", "c.gguf": "ok"}
    assert cli(["--registry", str(db), "verify"]) == 1
    out = capsys.readouterr()
    assert "missing" in out.out and "changed" in out.out and "2 registered file(s) missing or changed" in out.err
