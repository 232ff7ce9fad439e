"""loraforge.registry: versions are adapter revisions with artifacts beneath them, stored by content;
aliases, rollback, tags, concurrency, crash safety, bad files, migration from schema 1."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loraforge.errors import PipelineError
from loraforge.io.hashing import tree_fingerprint
from loraforge.registry import Registry, get_latest, register_model, rollback_model
from loraforge.registry.schema import MIGRATIONS, SCHEMA_VERSION


def artifact(tmp_path: Path, name: str, content: bytes | None = None) -> Path:
    p = tmp_path / name
    p.write_bytes(content if content is not None else name.encode() * 100)
    return p


def lineage(rev: str, base: str = "base-sha") -> dict:
    """The lineage of one adapter revision ``rev`` (as the pipeline records it, minus paths and tools)."""
    return {"base_model": {"sha256": base}, "adapters": [{"sha256": rev, "weight": 1.0}], "settings": {}}


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path) -> tuple[str, Path | None]:
    """Where a registry lives, on each backend: (a SQLite file, no store given: beside it) or (a new database on
    the session's real PostgreSQL server, a store directory)."""
    if request.param == "sqlite":
        return str(tmp_path / "reg.sqlite"), None
    return request.getfixturevalue("postgres").new_database(), tmp_path / "store"


@pytest.fixture
def reg(location):
    path, store = location
    r = Registry(path, store_dir=store)
    yield r
    r.close()


def test_a_version_is_a_revision_with_its_artifacts(reg, tmp_path):
    q8, q4 = artifact(tmp_path, "a-Q8_0.gguf"), artifact(tmp_path, "a-Q4_K_M.gguf")
    v1, new_v, new_a = reg.register("code", lineage("r1"), "gguf", "Q8_0", q8, {"evaluation": {"mean_kld": 0.01}})
    assert (v1.version, new_v, new_a) == (1, True, True)
    v1b, new_v, new_a = reg.register("code", lineage("r1"), "gguf", "Q4_K_M", q4)
    assert (v1b.version, new_v, new_a) == (1, False, True)  # same revision: an artifact of the same version
    again = reg.register("code", lineage("r1"), "gguf", "Q8_0", q8)
    assert again[1:] == (False, False)  # identical bytes again: nothing new
    v2 = reg.register("code", lineage("r2"), "gguf", "Q8_0", artifact(tmp_path, "b-Q8_0.gguf"))[0]
    assert v2.version == 2
    assert reg.register("prose", lineage("r1"), "gguf", "Q8_0", q8)[0].version == 1  # numbered per name
    mv = reg.get("code", 1)
    assert [(a.kind, a.variant) for a in mv.artifacts] == [("gguf", "Q4_K_M"), ("gguf", "Q8_0")]
    art = mv.artifact("Q8_0")
    assert art.size == q8.stat().st_size and art.metrics == {"evaluation": {"mean_kld": 0.01}}
    assert Path(art.store_path).read_bytes() == q8.read_bytes() and art.source_path == str(q8.resolve())
    assert reg.schema_version() == SCHEMA_VERSION == 4


def test_a_revision_s_artifact_is_immutable(reg, tmp_path):
    reg.register("code", lineage("r1"), "gguf", "Q8_0", artifact(tmp_path, "x.gguf", b"one"))
    with pytest.raises(PipelineError, match="already has a gguf Q8_0 with other content .* same settings"):
        reg.register("code", lineage("r1"), "gguf", "Q8_0", artifact(tmp_path, "y.gguf", b"two"))


def with_settings(rev: str, **settings) -> dict:
    return {**lineage(rev), "settings": settings}


def test_a_version_is_the_model_not_the_forms_built_from_it(reg, tmp_path):
    """Settings that only choose or tune derived artifacts (quant types, imatrix, hf_quant calibration, GGUF
    naming) add artifacts to the version; the adapter's bytes and the merge's semantics make a new one."""
    merge = {"method": "streaming"}
    v1 = reg.register("code", with_settings("r1", merge=merge), "gguf", "Q8_0", artifact(tmp_path, "a.gguf"))[0]
    calib = {"hf_quant": {"text": "c.txt", "samples": 8, "seq_len": 256, "group_size": None}}
    # the same adapter with a GPTQ checkpoint added to the config: an artifact of v1, not a v2
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "model.safetensors").write_bytes(b"gptq" * 50)
    mv, new_version, new_artifact = reg.register(
        "code",
        with_settings("r1", merge=merge),
        "hf-quant",
        "GPTQ-W4A16",
        ck,
        sha256=tree_fingerprint(ck),
        settings=calib,
    )
    assert (mv.version, new_version, new_artifact) == (1, False, True)
    assert v1.revision == mv.revision
    # settings of the old kind (a registry written before schema 4 kept them in the version's lineage) name the
    # same model
    old_style = with_settings("r1", merge={**merge, "shard_size_mb": 2000}, convert={"outtype": "bf16"}, **calib)
    assert reg.register("code", old_style, "gguf", "Q4_K_M", artifact(tmp_path, "b.gguf"))[0].version == 1
    # other merge semantics, other adapter bytes: other models
    assert (
        reg.register(
            "code", with_settings("r1", merge={"method": "peft"}), "gguf", "Q8_0", artifact(tmp_path, "c.gguf")
        )[0].version
        == 2
    )
    assert (
        reg.register("code", with_settings("r2", merge=merge), "gguf", "Q8_0", artifact(tmp_path, "d.gguf"))[0].version
        == 3
    )


def test_a_rebuild_with_other_settings_replaces_the_artifact_and_keeps_the_old_one(reg, tmp_path):
    first = {"hf_quant": {"text": "c.txt", "samples": 8}}
    reg.register("code", lineage("r1"), "gguf", "Q8_0", artifact(tmp_path, "a.gguf", b"one"), {"e": 1}, settings=first)
    again = {"hf_quant": {"text": "c.txt", "samples": 16}}  # re-calibrated
    mv, new_version, replaced = reg.register(
        "code", lineage("r1"), "gguf", "Q8_0", artifact(tmp_path, "b.gguf", b"two"), {"e": 2}, settings=again
    )
    assert (mv.version, new_version, replaced) == (1, False, True)
    (now,) = mv.artifacts
    assert now.settings == again and now.metrics == {"e": 2} and Path(now.store_path).read_bytes() == b"two"
    (old,) = mv.history  # never silently dropped: its bytes stay in the store
    assert old.settings == first and old.metrics == {"e": 1} and old.superseded_at
    assert Path(old.store_path).read_bytes() == b"one"
    assert reg.get("code", 1).to_dict()["history"][0]["sha256"] == old.sha256
    # the latest hand-out is the replacement
    assert reg.artifact_file("code", "Q8_0")[1].read_bytes() == b"two"


def test_a_lora_gguf_lists_a_row_per_base_type_it_was_measured_on(reg, tmp_path):
    ev = {"mean_kld": 0.01, "top1_agreement": 0.9, "texts": {"code": {"ppl": 7.0}}}
    metrics = {"check": {}, "evaluations": {"F16": ev, "Q8_0": {**ev, "mean_kld": 0.02}}}
    reg.register("code", lineage("r1"), "gguf", "lora-F16", artifact(tmp_path, "l.gguf"), metrics)
    art = reg.get("code", 1).artifact("lora-F16")
    assert [(label, e["mean_kld"]) for label, e in art.measured()] == [
        ("lora-F16 on F16", 0.01),
        ("lora-F16 on Q8_0", 0.02),
    ]


def test_migration_to_schema_4_keys_versions_by_the_model(tmp_path):
    """A registry of schema 3 with v2 registered only because hf_quant was added: v2 is tagged a duplicate of v1,
    v1 takes the model's new artifacts, v3 (retrained) stays itself; nothing is lost, no alias moves."""
    db = tmp_path / "reg.sqlite"
    settings = {"merge": {"method": "streaming", "shard_size_mb": 2000}}
    lin = {**lineage("r1"), "settings": settings}
    dup = {**lin, "settings": {**settings, "hf_quant": {"samples": 8}}}
    reg = Registry(db)
    reg.register("code", lin, "gguf", "Q8_0", artifact(tmp_path, "a.gguf"))
    reg.register("code", lineage("placeholder-r1"), "gguf", "Q8_0", artifact(tmp_path, "a.gguf"))  # becomes dup
    reg.register("code", {**lineage("r2"), "settings": settings}, "gguf", "Q8_0", artifact(tmp_path, "b.gguf"))
    reg.promote("code", 2, "production")
    reg.close()

    def schema_3_key(lin: dict) -> str:  # schema 3 keyed a version by all of its settings
        key = {"base": "base-sha", "adapters": [["r1", 1.0]], "settings": lin["settings"]}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    c = sqlite3.connect(db)
    c.execute("UPDATE versions SET revision = ? WHERE version = 1", (schema_3_key(lin),))
    c.execute("UPDATE versions SET revision = ?, lineage = ? WHERE version = 2", (schema_3_key(dup), json.dumps(dup)))
    c.execute("ALTER TABLE artifacts DROP COLUMN settings")  # what schema 4 added
    c.execute("DROP TABLE artifact_history")
    c.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    c.commit()
    c.close()
    reg = Registry(db)
    assert reg.schema_version() == 4
    assert [v.version for v in reg.versions("code")] == [1, 2, 3]
    assert reg.get("code", 2).tags == {"duplicate_of": "1"} and reg.get("code", 1).tags == {}
    assert {a["alias"]: a["version"] for a in reg.aliases("code")} == {"production": 2}
    assert reg.get("code", 2).artifact("Q8_0").settings == {"hf_quant": {"samples": 8}}
    mv = reg.register("code", dup, "gguf", "Q4_K_M", artifact(tmp_path, "c.gguf"))[0]
    assert mv.version == 1 and {a.variant for a in mv.artifacts} == {"Q8_0", "Q4_K_M"}
    reg.close()


def test_hand_out_is_the_registered_bytes_after_the_build_path_is_overwritten(reg, tmp_path):
    """The defect of schema 1: the registry recorded the build path, which the next build overwrote."""
    build = tmp_path / "code-Q4_K_M.gguf"
    build.write_bytes(b"revision one")
    reg.register("code", lineage("r1"), "gguf", "Q4_K_M", build)
    reg.promote("code", 1, "production")
    build.write_bytes(b"revision two")  # the rebuild (in place, the worst case)
    reg.register("code", lineage("r2"), "gguf", "Q4_K_M", build)
    reg.promote("code", 2, "production")
    assert reg.rollback("code", "production").version == 1
    mv, path = reg.artifact_file("code", "Q4_K_M", alias="production")
    assert mv.version == 1 and path.read_bytes() == b"revision one"
    assert reg.artifact_file("code", "Q4_K_M")[1].read_bytes() == b"revision two"  # latest
    assert [r["status"] for r in reg.verify()] == ["ok", "ok"]


def test_a_changed_store_file_is_never_handed_out(reg, tmp_path):
    reg.register("code", lineage("r1"), "gguf", "Q8_0", artifact(tmp_path, "a.gguf"))
    _mv, path = reg.artifact_file("code", "Q8_0")
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(PipelineError, match="registered file changed since registration.*refusing to hand it out"):
        reg.artifact_file("code", "Q8_0")
    assert [r["status"] for r in reg.verify()] == ["changed"]


def test_link_mode_shares_the_inode(tmp_path):
    reg = Registry(tmp_path / "reg.sqlite", store_mode="link")
    a = artifact(tmp_path, "a.gguf")
    mv = reg.register("code", lineage("r1"), "gguf", "Q8_0", a)[0]
    assert Path(mv.artifact("Q8_0").store_path).stat().st_ino == a.stat().st_ino


def test_a_hard_link_of_bytes_just_hashed_is_not_read_again(tmp_path, monkeypatch):
    """At 8B registration re-read 29 GB of GGUFs it had just hashed: a link of a file whose cached hash is of it as
    it is now is kept unread, and both caches learn it under the ctime the link gave it; bytes changed since their
    hash are read, and refused."""
    from loraforge.io.hashing import HashCache, sha256_file
    from loraforge.registry import filestore

    reads = []
    monkeypatch.setattr(filestore, "sha256_file", lambda p: reads.append(Path(p).name) or sha256_file(p))
    reg = Registry(tmp_path / "reg.sqlite", store_mode="link")
    hashes = HashCache(tmp_path / "hashes.json")
    a = artifact(tmp_path, "a.gguf")
    sha = hashes.sha256(a)
    mv = reg.register("code", lineage("r1"), "gguf", "Q8_0", a, sha256=sha, hashes=hashes)[0]
    stored = Path(mv.artifact("Q8_0").store_path)
    assert reads == [] and stored.stat().st_ino == a.stat().st_ino
    assert hashes.current(a) == sha and reg.store.hashes.current(stored) == sha
    assert [r["status"] for r in reg.verify()] == ["ok"]

    b = artifact(tmp_path, "b.gguf")
    sha_b = hashes.sha256(b)
    b.write_bytes(b"edited after its hash")
    with pytest.raises(PipelineError, match="b.gguf: changed while it was being registered; nothing registered"):
        reg.register("code", lineage("r2"), "gguf", "Q8_0", b, sha256=sha_b, hashes=hashes)
    assert len(reads) == 1 and reg.resolve("code").version == 1


def test_directories_are_recorded_not_stored(reg, tmp_path):
    d = tmp_path / "merged"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"w" * 10)
    mv = reg.register("code", lineage("r1"), "merged", "hf", d, sha256="f" * 64, store=False)[0]
    assert mv.artifact("hf").store_path is None and mv.artifact("hf").size == 10
    assert reg.verify()[0]["status"] == "not stored"


def test_aliases_promote_latest_rollback_history(reg, tmp_path):
    for i in range(3):
        reg.register("code", lineage(f"r{i}"), "gguf", "Q8_0", artifact(tmp_path, f"{i}.gguf"))
    assert reg.resolve("code").version == 3
    for v in (1, 2, 3):
        reg.promote("code", v, "production", reason=f"because {v}")
    assert reg.resolve("code", alias="production").version == 3
    assert reg.rollback("code", "production").version == 2
    assert reg.rollback("code", "production").version == 1  # undo stack: back again
    with pytest.raises(PipelineError, match="no earlier version"):
        reg.rollback("code", "production")
    hist = reg.history("code", "production")
    assert [(h["action"], h["previous_version"], h["version"]) for h in hist] == [
        ("promote", None, 1),
        ("promote", 1, 2),
        ("promote", 2, 3),
        ("rollback", 3, 2),
        ("rollback", 2, 1),
    ]
    assert hist[1]["reason"] == "because 2"
    assert reg.get("code", 1).aliases == ("production",)


def test_refused_promotions_are_history_but_not_positions(reg, tmp_path):
    for i in range(2):
        reg.register("code", lineage(f"r{i}"), "gguf", "Q8_0", artifact(tmp_path, f"{i}.gguf"))
    reg.promote("code", 1, "production")
    reg.record_decision("code", "production", 2, "not better", {"texts": {}})
    assert reg.resolve("code", alias="production").version == 1
    assert [h["action"] for h in reg.history("code")] == ["promote", "refused"]
    assert reg.history("code")[1]["evidence"] == {"texts": {}}


def test_tags(reg, tmp_path):
    reg.register("code", lineage("r1"), "gguf", "Q8_0", artifact(tmp_path, "a.gguf"))
    assert reg.tag("code", 1, "dataset", "support-2026-11").tags == {"dataset": "support-2026-11"}


@pytest.mark.parametrize("alias", ["", "1", "a/b", "../x", "with space", "x" * 65])
def test_bad_alias_names_are_refused(reg, tmp_path, alias):
    reg.register("code", lineage("r1"), "gguf", "Q8_0", artifact(tmp_path, "a.gguf"))
    with pytest.raises(PipelineError, match="alias .*: a name of letters"):
        reg.promote("code", 1, alias)


def test_errors_name_what_is_missing(reg, tmp_path):
    reg.register("code", lineage("r1"), "gguf", "Q8_0", artifact(tmp_path, "a.gguf"))
    with pytest.raises(PipelineError, match="has no alias 'production' to roll back"):
        reg.rollback("code", "production")
    with pytest.raises(PipelineError, match="no version 7 of 'code'"):
        reg.promote("code", 7, "staging")
    with pytest.raises(PipelineError, match="no versions of 'nosuch'"):
        reg.history("nosuch")
    with pytest.raises(PipelineError, match="code v1 has no artifact Q4_K_M \\(it has: gguf Q8_0\\)"):
        reg.get("code", 1).artifact("Q4_K_M")


def test_a_read_only_open_of_a_missing_registry_creates_nothing(tmp_path):
    with pytest.raises(PipelineError, match="no registry there"):
        Registry(tmp_path / "typo" / "reg.sqlite", create=False)
    assert not (tmp_path / "typo").exists()


def test_module_level_functions(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFORGE_REGISTRY", str(tmp_path / "default.sqlite"))
    register_model("code", artifact(tmp_path, "a.gguf"), "Q8_0", lineage("r1"))
    register_model("code", artifact(tmp_path, "b.gguf"), "Q8_0", lineage("r2"))
    reg = Registry(tmp_path / "default.sqlite")
    reg.promote("code", 1, "production")
    reg.promote("code", 2, "production")
    mv, path = get_latest("code", "Q8_0")
    assert mv.version == 2 and path.read_bytes() == (tmp_path / "b.gguf").read_bytes()
    assert rollback_model("code", "production").version == 1


def test_migration_from_schema_1(tmp_path):
    """A registry written by loraforge before versions meant revisions: one version per GGUF, paths not files.
    Written here with schema 1's own statements; one of its files changed after it was registered."""
    db = tmp_path / "old.sqlite"
    c = sqlite3.connect(db)
    c.row_factory = sqlite3.Row
    c.execute("PRAGMA foreign_keys = ON")
    MIGRATIONS[0](c)
    c.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    files = {}
    rows = [  # (version, quant, revision) as schema 1 numbered them: in job-completion order
        (1, "Q4_K_M", "r1"),
        (2, "Q8_0", "r1"),
        (3, "F16", "r1"),
        (4, "Q8_0", "r2"),
        (5, "Q4_K_M", "r2"),
    ]
    for v, q, rev in rows:
        f = artifact(tmp_path, f"{rev}-{q}.gguf")
        files[(rev, q)] = f
        lin = {**lineage(rev), "settings": {"quant_type": q, "merge": {"method": "streaming"}}}
        cur = c.execute(
            "INSERT INTO versions (name, version, quant_type, content_sha256, lineage, metrics, created_at)"
            " VALUES ('code', ?, ?, ?, ?, ?, '2026-11-01T00:00:0' || ?)",
            (v, q, f"c{v}", json.dumps(lin), json.dumps({"mean_kld": 0.01 * v}), v),
        )
        import hashlib

        c.execute(
            "INSERT INTO files VALUES (?, 'model', ?, ?, ?)",
            (cur.lastrowid, str(f), hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_size),
        )
    c.execute("INSERT INTO aliases VALUES ('code', 'production', 4, 'x')")
    for v, prev in ((2, None), (4, 2)):
        c.execute(
            "INSERT INTO alias_history (name, alias, action, version, previous_version, at)"
            " VALUES ('code', 'production', 'promote', ?, ?, 'x')",
            (v, prev),
        )
    c.commit()
    c.close()
    files[("r2", "Q4_K_M")].write_bytes(b"rebuilt since")  # schema 1 would hand this out as the old version

    reg = Registry(db)
    assert reg.schema_version() == SCHEMA_VERSION == 4
    vs = reg.versions("code")
    assert [(v.version, sorted(a.variant for a in v.artifacts)) for v in vs] == [
        (1, ["F16", "Q4_K_M", "Q8_0"]),
        (2, ["Q4_K_M", "Q8_0"]),
    ]
    assert reg.resolve("code", alias="production").version == 2  # v4 (r2's Q8_0) belongs to revision 2
    assert [(h["previous_version"], h["version"]) for h in reg.history("code")] == [(None, 1), (1, 2)]
    assert vs[0].artifact("Q8_0").metrics == {"legacy_v1": {"mean_kld": 0.02}}
    status = {(r["version"], r["variant"]): r["status"] for r in reg.verify()}
    assert status[(2, "Q4_K_M")] == "not stored" and status[(2, "Q8_0")] == "ok" and status[(1, "F16")] == "ok"
    assert reg.rollback("code", "production").version == 1
    assert reg.artifact_file("code", "Q8_0", alias="production")[1].read_bytes() == files[("r1", "Q8_0")].read_bytes()


WRITER = textwrap.dedent("""
    import sys, time
    from loraforge.registry import Registry
    path, art, rev, start = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    while time.time() < start:
        time.sleep(0.001)
    lin = {"base_model": {"sha256": "b"}, "adapters": [{"sha256": rev, "weight": 1.0}], "settings": {}}
    v, new_v, new_a = Registry(path).register("code", lin, "gguf", art.rsplit("-", 1)[1], art)
    print(v.version, rev, int(new_a))
""")


def test_sixteen_concurrent_writers_lose_and_duplicate_nothing(location, tmp_path):
    """Four revisions x three artifact types, plus four duplicate registrations, racing from no registry."""
    import time

    db, store = location
    env = dict(os.environ, **({"LORAFORGE_REGISTRY_STORE": str(store)} if store else {}))
    jobs = [(artifact(tmp_path, f"{r}-{q}", f"{r}{q}".encode()), r) for r in "wxyz" for q in ("Q8_0", "Q4_K_M", "F16")]
    jobs += jobs[:4]
    start = time.time() + 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), str(a), r, str(start)], stdout=subprocess.PIPE, text=True, env=env
        )
        for a, r in jobs
    ]
    results = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(int(c) for _v, _r, c in results) == 12  # every artifact registered once
    version_of = {}
    for v, r, _c in results:
        assert version_of.setdefault(r, v) == v  # one version per revision, whoever came first
    assert sorted(int(v) for v in version_of.values()) == [1, 2, 3, 4]
    reg = Registry(db, store_dir=store)
    assert [len(v.artifacts) for v in reg.versions("code")] == [3, 3, 3, 3]
    assert [r["status"] for r in reg.verify()] == ["ok"] * 12
    if not store:
        assert reg.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    reg.close()


PROMOTER = textwrap.dedent("""
    import sys, time
    from loraforge.registry import Registry
    path, version, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    reg = Registry(path, create=False)
    while time.time() < start:
        time.sleep(0.001)
    for _ in range(5):
        reg.promote("code", version, "production", reason=f"by writer {version}")
""")


def test_racing_promotions_keep_a_whole_history(location, tmp_path):
    """Eight processes move one alias five times each at once: 40 moves, each recorded with the version it
    replaced, so the history is one unbroken chain and the alias ends where the last move put it."""
    import time

    db, store = location
    reg = Registry(db, store_dir=store)
    for i in range(1, 9):
        reg.register("code", lineage(f"r{i}"), "gguf", "Q8_0", artifact(tmp_path, f"{i}.gguf"))
    env = dict(os.environ, **({"LORAFORGE_REGISTRY_STORE": str(store)} if store else {}))
    start = time.time() + 2
    procs = [
        subprocess.Popen([sys.executable, "-c", PROMOTER, str(db), str(v), str(start)], env=env, text=True)
        for v in range(1, 9)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 8
    history = reg.history("code", "production")
    assert len(history) == 40
    assert history[0]["previous_version"] is None
    assert all(h["previous_version"] == prev["version"] for prev, h in zip(history, history[1:], strict=False))
    assert reg.resolve("code", alias="production").version == history[-1]["version"]
    reg.close()


KILLED = textwrap.dedent("""
    import sys, time
    from loraforge.registry import Registry
    reg = Registry(sys.argv[1])
    with reg.db.write() as c:
        c.execute("INSERT INTO versions (name, version, revision, lineage, created_at)"
                  " VALUES ('code', 99, 'x', '{}', 'now')")
        print("in transaction", flush=True)
        time.sleep(60)
""")


def test_writer_killed_mid_transaction_leaves_database_consistent(tmp_path):
    db = tmp_path / "reg.sqlite"
    reg = Registry(db)
    reg.register("code", lineage("r1"), "gguf", "Q8_0", artifact(tmp_path, "a.gguf"))
    p = subprocess.Popen([sys.executable, "-c", KILLED, str(db)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "in transaction"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    reg2 = Registry(db)
    assert reg2.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [v.version for v in reg2.versions("code")] == [1]
    v = reg2.register("code", lineage("r2"), "gguf", "Q8_0", artifact(tmp_path, "b.gguf"))[0]  # lock released
    assert v.version == 2


def test_non_sqlite_file_is_refused_and_not_overwritten(tmp_path):
    from loraforge.registry.cli import main as cli

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
    reg.register("code", lineage("r1"), "gguf", "Q8_0", artifact(tmp_path, "a.gguf"))
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


def test_a_copied_or_moved_registry_serves_and_verifies_its_own_store(tmp_path):
    """Store paths are recorded relative to the store: a registry copied elsewhere with its store (a backup, shared
    storage) hands out and verifies the copy's files, even once the original is gone."""
    import shutil

    home = tmp_path / "home"
    home.mkdir()
    reg = Registry(home / "reg.sqlite")
    reg.register("code", lineage("r1"), "gguf", "Q8_0", artifact(tmp_path, "a.gguf"))
    reg.register("code", lineage("r2"), "gguf", "Q8_0", artifact(tmp_path, "b.gguf"))
    reg.close()
    moved = shutil.copytree(home, tmp_path / "elsewhere")
    shutil.rmtree(home)
    reg = Registry(moved / "reg.sqlite", create=False)
    mv, path = reg.artifact_file("code", "Q8_0")
    assert mv.version == 2 and path.is_relative_to(moved) and path.read_bytes() == b"b.gguf" * 100
    assert [r["status"] for r in reg.verify()] == ["ok", "ok"]
    assert all(Path(r["path"]).is_relative_to(moved) for r in reg.verify())
    raw = sqlite3.connect(moved / "reg.sqlite").execute("SELECT store_path FROM artifacts").fetchall()
    assert all(r[0].startswith("sha256/") for r in raw), raw


def test_schema_2_absolute_store_paths_migrate_to_relative(tmp_path):
    db = tmp_path / "reg.sqlite"
    reg = Registry(db)
    reg.register("code", lineage("r1"), "gguf", "Q8_0", artifact(tmp_path, "a.gguf"))
    reg.close()
    c = sqlite3.connect(db)  # as schema 2 wrote it: the absolute path of the store where it was then
    c.execute("UPDATE artifacts SET store_path = '/old/place/reg.sqlite.store/' || store_path")
    c.execute("ALTER TABLE artifacts DROP COLUMN settings")  # what schema 4 added
    c.execute("DROP TABLE artifact_history")
    c.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    c.commit()
    c.close()
    reg = Registry(db)
    assert reg.schema_version() == SCHEMA_VERSION == 4
    _mv, path = reg.artifact_file("code", "Q8_0")
    assert path == (tmp_path / "reg.sqlite.store").joinpath(*path.parts[-3:]) and path.is_file()


def test_promotion_refuses_a_version_whose_stored_file_changed(reg, tmp_path):
    reg.register("code", lineage("r1"), "gguf", "Q8_0", artifact(tmp_path, "a.gguf"))
    _mv, path = reg.artifact_file("code", "Q8_0")
    os.chmod(path, 0o644)
    path.write_bytes(b"edited in the store")
    with pytest.raises(PipelineError, match=r"code v1 not promoted to production: .*changed since registration"):
        reg.promote("code", 1, "production")
    assert reg.aliases("code") == [] and reg.history("code") == []


def test_sqlite_on_a_network_filesystem_is_refused_in_one_line(tmp_path):
    from loraforge.registry.database import network_filesystem

    mounts = "/dev/sda1 / ext4 rw 0 0\nserver:/export /shared nfs4 rw 0 0\n/dev/sdb1 /shared/local xfs rw 0 0\n"
    assert network_filesystem(Path("/shared/team/registry.sqlite"), mounts) == "nfs4"
    assert network_filesystem(Path("/shared/local/registry.sqlite"), mounts) is None  # a local disk mounted inside
    assert network_filesystem(Path("/home/me/registry.sqlite"), mounts) is None
    assert network_filesystem(tmp_path / "reg.sqlite") is None  # this machine's temp dir: a local disk


def test_a_sqlite_registry_migrates_into_postgresql(postgres, tmp_path, capsys):
    """loraforge-registry migrate: every version, artifact, tag, alias, history entry and comparison, ids kept; the
    PostgreSQL registry serves and verifies the same store."""
    from loraforge.registry.cli import main as cli

    db = tmp_path / "reg.sqlite"
    reg = Registry(db)
    for i in (1, 2):
        reg.register("code", lineage(f"r{i}"), "gguf", "Q8_0", artifact(tmp_path, f"{i}.gguf"), {"evaluation": {}})
    reg.promote("code", 1, "production")
    reg.promote("code", 2, "production", reason="better")
    reg.tag("code", 2, "owner", "me")
    reg.add_comparison("code", 1, 2, "Q8_0", {"winner": 2})
    before = [v.to_dict() for v in reg.versions("code")], reg.history("code"), reg.comparisons("code")
    reg.close()
    url = postgres.new_database()
    assert cli(["--registry", str(db), "migrate", url]) == 0
    assert "copied into postgresql://loraforge@" in capsys.readouterr().out
    pg = Registry(url, create=False)  # the store was recorded at the copy
    assert ([v.to_dict() for v in pg.versions("code")], pg.history("code"), pg.comparisons("code")) == before
    assert [r["status"] for r in pg.verify()] == ["ok", "ok"]
    mv, path = pg.artifact_file("code", "Q8_0", alias="production")
    assert mv.version == 2 and path.read_bytes() == (tmp_path / "2.gguf").read_bytes()
    pg.register("code", lineage("r3"), "gguf", "Q8_0", artifact(tmp_path, "3.gguf"))  # ids continue after the copy
    assert [v.version for v in pg.versions("code")] == [1, 2, 3]
    pg.close()
    assert cli(["--registry", str(db), "migrate", url]) == 1  # only into a new registry
    assert "not empty" in capsys.readouterr().err


def test_postgresql_that_is_not_a_registry_or_has_none_is_left_alone(postgres, tmp_path):
    import psycopg

    other = postgres.new_database()
    with psycopg.connect(other, autocommit=True) as c:
        c.execute("CREATE TABLE notes (id SERIAL PRIMARY KEY, body TEXT)")
    with pytest.raises(PipelineError, match="a database that is not a loraforge registry; left untouched"):
        Registry(other, store_dir=tmp_path / "store")
    empty = postgres.new_database()
    with pytest.raises(PipelineError, match="no registry there"):
        Registry(empty, create=False)
    with pytest.raises(PipelineError, match="needs a store directory that every host sees"):
        Registry(empty)
    with psycopg.connect(other) as c, psycopg.connect(empty) as d:  # refused before anything was written
        tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        assert [r[0] for r in c.execute(tables)] == ["notes"] and list(d.execute(tables)) == []
    with pytest.raises(PipelineError, match="cannot connect to the registry's PostgreSQL server"):
        Registry("postgresql://nobody:secret@127.0.0.1:1/none", create=False)


def _columns(conn, tables) -> dict[str, list[str]]:
    return {t: sorted(r[0] for r in conn.execute(f"SELECT * FROM {t} LIMIT 0").description) for t in tables}


def test_one_schema_a_new_registry_of_either_backend_and_a_migrated_one_agree(tmp_path, postgres):
    """The schema is written once (schema.CURRENT_SCHEMA): a new SQLite registry, a new PostgreSQL one and a schema-1
    file brought forward by the migrations have the same tables with the same columns."""
    tables = ("meta", "versions", "artifacts", "artifact_history", "tags", "aliases", "alias_history", "comparisons")
    new = Registry(tmp_path / "new.sqlite")
    old_path = tmp_path / "old.sqlite"
    c = sqlite3.connect(old_path)
    c.row_factory = sqlite3.Row
    MIGRATIONS[0](c)
    c.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    c.commit()
    c.close()
    migrated = Registry(old_path)
    pg = Registry(postgres.new_database(), store_dir=tmp_path / "store")
    try:
        want = _columns(new.conn, tables)
        assert _columns(migrated.conn, tables) == want
        assert _columns(pg.conn, tables) == want
        assert new.schema_version() == migrated.schema_version() == pg.schema_version() == SCHEMA_VERSION
    finally:
        for r in (new, migrated, pg):
            r.close()


def test_a_directory_stored_by_another_job_first_is_taken_as_stored(tmp_path, monkeypatch):
    """Two jobs register the same PEFT directory at once (make demo-vllm's vllm-lora forms of one adapter): the one
    that renames second finds the first's copy in place and uses it, instead of failing on the rename."""
    import shutil

    from loraforge.io.hashing import tree_fingerprint
    from loraforge.registry import filestore

    src = tmp_path / "adapter"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    (src / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    sha = tree_fingerprint(src)
    store = filestore.ArtifactStore(tmp_path / "store")
    dst = store.path_for(sha, ".d")
    real_copytree = shutil.copytree

    def copy_then_lose_the_race(a, b, **kw):
        out = real_copytree(a, b, **kw)
        real_copytree(a, dst)  # the other job's rename lands between our check and ours
        return out

    monkeypatch.setattr(filestore.shutil, "copytree", copy_then_lose_the_race)
    stored = store.put(src, sha)
    assert stored == dst and tree_fingerprint(stored) == sha
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]  # no temporary directory left
