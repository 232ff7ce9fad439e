"""Planning at a team's scale: how long Snakemake takes to plan the workflow for many adapters, before any job.

    python -m bench.plan --adapters 100 300 1000 --out results/bench/plan.json

A tiny bfloat16 Llama base with a real tokenizer and one PEFT LoRA adapter are built once; the config names N
symlinked copies of the adapter (``a0000`` ...) with four quant types, one evaluation text, the registry and
deploy bundles on (the defaults). For each N, in a fresh copy of the workflow, ``snakemake -n`` runs in a child
process: its wall time, its peak RSS (``wait4``) and the number of jobs it planned. The adapters' and base's
fingerprints are cached after a first (untimed) dry run, as they are on every invocation after a user's first. The
sizes run one after another in this process, so their seconds compare side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"]
WORKFLOW = ("Snakefile", "rules", "scripts", "schemas", "envs", "profiles", "report", "config")


def build_models(root: Path) -> tuple[Path, Path, Path]:
    """A tiny bf16 base (hidden 256: K-quants are real), one LoRA adapter and a held-out text."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from loraforge.demo import corpora

    from .families import FAMILIES, build_tokenizer

    base, adapter = root / "base", root / "adapter"
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(str(base))
    build_tokenizer(FAMILIES["mistral"], base)
    peft = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    peft.save_pretrained(str(adapter))
    text = root / "heldout.txt"
    text.write_text(corpora()["general"]["heldout"][:4000])
    return base, adapter, text


def dry_run(workdir: Path, config: Path) -> dict:
    """``snakemake -n`` in a child process: seconds, peak RSS and the jobs it planned."""
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    start = time.perf_counter()
    proc = subprocess.Popen(
        [snakemake, "-n", "--cores", "2", "--quiet", "rules", "--configfile", str(config)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    out = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"snakemake -n failed in {workdir}:\n{out[-3000:]}")
    m = re.search(r"^total\s+(\d+)", out, flags=re.M)
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024), "jobs": int(m.group(1))}


def plan_size(root: Path, models: tuple[Path, Path, Path], n: int) -> dict:
    base, adapter, text = models
    work = root / f"wf-{n}"
    work.mkdir()
    for name in WORKFLOW:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    adapters = root / f"adapters-{n}"
    adapters.mkdir()
    for i in range(n):
        (adapters / f"a{i:04d}").symlink_to(adapter)
    config = work / "team.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base_model": str(base),
                "adapters": {f"a{i:04d}": str(adapters / f"a{i:04d}") for i in range(n)},
                "quantize": {"types": TYPES},
                "evaluation": {"texts": {"general": str(text)}},
            }
        )
    )
    dry_run(work, config)  # the first invocation fingerprints the inputs; every later one reads the cache
    return {"adapters": n, "types": len(TYPES), **dry_run(work, config)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapters", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="loraforge-bench-plan-") as tmp:
        root = Path(tmp)
        models = build_models(root)
        for n in a.adapters:
            row = plan_size(root, models, n)
            rows.append(row)
            print(
                f"{row['adapters']:>5} adapters x {row['types']} types: {row['jobs']:>6} jobs planned in "
                f"{row['seconds']:>7.1f} s, peak RSS {row['peak_rss_mb']} MB "
                f"({1000 * row['seconds'] / row['jobs']:.2f} ms a job)",
                flush=True,
            )
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=2) + "\n")
    return 0


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
