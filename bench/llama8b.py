"""The seed's own model size through the default workflow: a Llama-3.1-8B-Instruct-shaped model on this machine.

    python -m bench.llama8b --out results/bench/8b.json        # make bench-8b

The base has the exact Llama-3.1-8B-Instruct config (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate
14336, vocab 128256, rope_theta 500000 with llama3 rope scaling), bf16 in 4 safetensors shards (16 GB), with
llama.cpp's real Llama 3 tokenizer and Llama-3.1-8B-Instruct's chat template; its weights are seeded random,
scaled so that activations stay finite and predictions are confident (the head is a multiple of the embedding,
the sublayers add little to the residual stream), as a trained model's are: a check's top-1 agreement is not then
decided by ties of a random model. The adapter is a rank-16 LoRA on every linear layer. Both are generated once
into the cache.

Then, in one run, so that the ratios are measured side by side on the same (noisy) machine:

1. **The chain**: the default workflow on them (merge, BF16 GGUF, Q8_0 and Q4_K_M, reference, evaluation on a
   short text, registry, deploy bundle) with the default memory budget; every job's wall time and peak memory
   (loraforge.rule's ``job resources`` log line: this process and its children, and the anonymous part).
2. **The bare tools beside it**, each a child process on the same inputs: the streaming merge without its check,
   llama.cpp's ``convert_hf_to_gguf.py`` on the merged model, ``llama-quantize`` Q8_0 and Q4_K_M of the BF16 GGUF.
   Each job's time over its bare tool's, and the chain's over the bare tools' sum. (The merge job computes the
   adapter's float32 reference first, since 2026-12-07: its own ratio includes that pass; the chain's is what to
   compare.)
3. **A LoRA-only revision** (``merge.enabled: false``): the base's GGUFs and the first revision are built, then
   the adapter's bytes change and the rerun, from the change to the registered LoRA GGUF, is timed.

Disk (about 80 GB free is enough): the LoRA GGUF form is off in the chain and the registry hard-links; the bare
tools replace the chain's models one at a time (their sidecars and metrics stay), so the LoRA-only part has room
for the base's own GGUFs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from loraforge.checks import CHECK_TEXT
from loraforge.io.publish import atomic_dir, write_text_atomic
from loraforge.io.safetensors import encode
from loraforge.merging.streaming import plan_shards, shard_name, write_index

from .families import FAMILIES, build_tokenizer
from .merge import measure_child, write_lora, write_safetensors

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]

# meta-llama/Llama-3.1-8B-Instruct's config.json
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}
RANK = 16
HEAD_GAP = 16.0
SHARD_BYTES = int(4.3e9)  # 4 shards, as the released model has


def _shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, inter, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg["vocab_size"], h)}
    for i in range(n):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (h, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, h),
                p + "post_attention_layernorm.weight": (h,),
                p + "mlp.gate_proj.weight": (inter, h),
                p + "mlp.up_proj.weight": (inter, h),
                p + "mlp.down_proj.weight": (h, inter),
            }
        )
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (cfg["vocab_size"], h)
    return shapes


def _values(name: str, shape: tuple[int, ...], rng, embed: list) -> np.ndarray:
    """Seeded weights: realistic scales, sublayer norms of 0.05 and an o_proj of std 0.002 so the residual stream
    stays near the token's embedding, and a head that is a multiple of the embedding: each next-token distribution
    is peaked (on the token itself), as a trained model's are."""
    if name.endswith("layernorm.weight"):
        return np.full(shape, 0.05, np.float32)
    if name == "model.norm.weight":
        return np.ones(shape, np.float32)
    if name == "lm_head.weight":  # the token's own logit HEAD_GAP above the others' spread (~0.26): p ~ 0.99
        return embed.pop() * (HEAD_GAP / (shape[1] * 0.02))
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= 0.002 if name.endswith("o_proj.weight") else 0.02
    if name == "model.embed_tokens.weight":
        embed.append(x.copy())
    return x


# Llama 3.1 named three of Llama 3's reserved special tokens (the vocabulary of llama.cpp's tree is Llama 3's)
LLAMA31_TOKENS = {128004: "<|finetune_right_pad_id|>", 128008: "<|eom_id|>", 128010: "<|python_tag|>"}


def _as_llama31(tok_dir: Path) -> None:
    """Llama 3's tokenizer -> Llama 3.1's: the three renamed special tokens (ids and merges unchanged)."""
    f = tok_dir / "tokenizer.json"
    t = json.loads(f.read_text())
    vocab = t["model"]["vocab"]
    for added in t["added_tokens"]:
        if added["id"] in LLAMA31_TOKENS:
            vocab.pop(added["content"], None)
            added["content"] = LLAMA31_TOKENS[added["id"]]
            vocab[added["content"]] = added["id"]
    f.write_text(json.dumps(t, ensure_ascii=False))


def make_llama31_8b(root: Path, seed: int = 0, cfg: dict = CONFIG, shard_bytes: int = SHARD_BYTES) -> tuple[Path, Path]:
    """Cached base (the Llama-3.1-8B-Instruct config, bf16, sharded) and its rank-16 LoRA; (base_dir, adapter_dir)."""
    tag = f"L{cfg['num_hidden_layers']}-h{cfg['hidden_size']}"
    base, adapter = root / f"llama31-{tag}", root / f"llama31-{tag}-lora-r{RANK}"
    rng = np.random.default_rng(seed)
    if not base.exists():
        shapes = _shapes(cfg)
        log.info(
            "generating a %.1f GB Llama-3.1-8B-shaped base in %s", 2 * sum(map(math.prod, shapes.values())) / 1e9, base
        )
        with atomic_dir(base) as tmp:
            dtypes = {n: ("BF16", s) for n, s in shapes.items()}
            shards = plan_shards(dtypes, shard_bytes)
            weight_map, embed = {}, []
            for k, names in enumerate(shards, 1):
                fname = shard_name(k, len(shards))
                gens = {
                    n: ("BF16", shapes[n], lambda n=n: encode(_values(n, shapes[n], rng, embed), "BF16")) for n in names
                }
                write_safetensors(tmp / fname, gens)
                weight_map.update(dict.fromkeys(names, fname))
                log.info("wrote %s", fname)
            write_index(tmp, dtypes, weight_map)
            build_tokenizer(FAMILIES["llama3"], tmp)  # llama.cpp's Llama 3 vocabulary, Llama-3.1-8B-Instruct's template
            _as_llama31(tmp)
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            (tmp / "generation_config.json").write_text(
                json.dumps({"bos_token_id": 128000, "eos_token_id": cfg["eos_token_id"]}, indent=2) + "\n"
            )
    if not adapter.exists():
        shapes = _shapes(cfg)
        tensors = {}
        for name, (out_f, in_f) in ((n, s) for n, s in shapes.items() if len(s) == 2 and ".layers." in n):
            key = "base_model.model." + name.removesuffix(".weight")
            tensors[f"{key}.lora_A.weight"] = (
                "F32",
                (RANK, in_f),
                lambda s=(RANK, in_f): rng.standard_normal(s, dtype=np.float32) * 0.01,
            )
            tensors[f"{key}.lora_B.weight"] = (
                "F32",
                (out_f, RANK),
                lambda s=(out_f, RANK): rng.standard_normal(s, dtype=np.float32) * 0.002,
            )
        write_lora(adapter, tensors, RANK, 2 * RANK, "meta-llama/Llama-3.1-8B-Instruct")
    return base, adapter


def workflow_config(base: Path, adapter: Path, text: Path, budget_mb: float | None = None) -> dict:
    """The default workflow, with what this benchmark needs said: two quant types, a short evaluation text."""
    memory = {"memory": {"budget_mb": budget_mb}} if budget_mb else {}
    return {
        **memory,
        "name": "Llama-3.1-8B-Instruct-synthetic",
        "base_model": str(base),
        "adapters": {"support": str(adapter)},
        "convert": {"outtype": "bf16"},
        "quantize": {"types": ["Q8_0", "Q4_K_M"]},
        "evaluation": {"texts": {"heldout": str(text)}, "n_ctx": 128, "max_tokens": 256},
        "lora": {"enabled": False},
        "registry": {"store": "link"},
    }


_RESOURCES = re.compile(r"job resources: (\{.*\})")


def job_resources(work: Path) -> list[dict]:
    """Every job's wall time and peak memory, from the ``job resources`` line of its log."""
    jobs = []
    for f in sorted((work / "logs").rglob("*.log")):
        found = _RESOURCES.findall(f.read_text(errors="replace"))
        if found:
            jobs.append({"rule": f.parent.name, "job": f.stem, **json.loads(found[-1])})
    return jobs


def table(jobs: list[dict]) -> str:
    rows = ["| job | wall s | peak RSS MB | of it anonymous MB |", "|---|---|---|---|"]
    for j in jobs:
        rows.append(f"| {j['rule']} {j['job']} | {j['wall_s']:.0f} | {j['peak_rss_mb']} | {j['peak_anon_mb']} |")
    return "\n".join(rows)


def _snakemake(work: Path, cores: int) -> tuple[int, float]:
    """The workflow in ``work`` (its config.yaml) with the local profile: (exit status, wall seconds)."""
    cmd = [
        str(Path(sys.executable).with_name("snakemake")),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(work / "config.yaml"),
        "--profile",
        str(REPO / "profiles" / "local"),
        "--cores",
        str(cores),
    ]
    log.info("running the workflow: %s", " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    return proc.returncode, time.perf_counter() - t0


def _write_config(work: Path, cfg: dict) -> None:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


# (job, its bare tool): what each of the chain's artifact-making jobs runs, without checks and bookkeeping
BARE = (
    "merge_adapter support",
    "convert_to_gguf support-BF16",
    "quantize_gguf support-Q8_0",
    "quantize_gguf support-Q4_K_M",
)


def read_into_page_cache(*paths: Path) -> None:
    """Every file under ``paths`` read once, so that a tool timed next finds it in memory (where it fits)."""
    t0, n = time.time(), 0
    for p in paths:
        for f in [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()):
            with open(f, "rb", buffering=0) as fh:
                while chunk := fh.read(1 << 24):
                    n += len(chunk)
    log.info("read %.1f GB into the page cache in %.0f s (untimed)", n / 1e9, time.time() - t0)


def bare_tools(base: Path, adapter: Path, work: Path, threads: int) -> dict[str, dict]:
    """Each artifact-making tool of the chain alone, a child process on the chain's own inputs: {job: {"wall_s",
    "peak_rss_mb"}}. At 8B the disk holds the chain's models or the bare copies, not both: so the quantizations
    run first (from the chain's BF16 GGUF, its own quantized GGUFs deleted), then the conversion (from the chain's
    merged model, its BF16 GGUF deleted), then the merge (the chain's merged model deleted). Sidecars, checks and
    metrics stay; every bare output is deleted after its measurement.

    Each bare tool starts with its input read into the page cache (untimed), as in a bare chain run by hand, where
    each tool reads what the one before it just wrote: run in this order after the chain, a tool would otherwise
    read its input from the disk where the chain's job read it from memory, and the ratio would flatter the chain
    (on a Xeon with a slow disk the bare Q8_0 quantization took 81 s cold against the chain job's 59 s)."""
    from loraforge.llamacpp.toolchain import locate
    from loraforge.llamacpp.tools import converter_env

    lc, out = locate(), work / "bare"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    res = work / "results"
    gguf = res / "gguf" / "support"
    store = list(work.glob("*.store"))

    def drop(*names: str) -> None:  # the chain's files of these names, and the registry's hard links of them
        for name in names:
            f = gguf / name
            if f.exists():
                sha = json.loads((gguf / f"{name}.json").read_text())["sha256"]
                f.unlink()
                for linked in (p for s in store for p in s.rglob(f"{sha}*")):
                    linked.unlink()

    merge = f"from loraforge.merging import merge; merge({str(base)!r}, [{str(adapter)!r}], {str(out / 'merged')!r})"
    steps = [
        (BARE[2], [str(lc.tool("llama-quantize")), str(gguf / "support-BF16.gguf"), str(out / "q.gguf"), "Q8_0"]),
        (BARE[3], [str(lc.tool("llama-quantize")), str(gguf / "support-BF16.gguf"), str(out / "q.gguf"), "Q4_K_M"]),
        (BARE[1], [sys.executable, str(lc.script("convert_hf_to_gguf.py")), str(res / "merged" / "support")]),
        (BARE[0], [sys.executable, "-c", merge]),
    ]
    steps[0][1].append(str(threads))
    steps[1][1].append(str(threads))
    steps[2][1].extend(["--outfile", str(out / "bf16.gguf"), "--outtype", "bf16"])
    inputs = {
        BARE[0]: (base, adapter),
        BARE[1]: (res / "merged" / "support",),
        BARE[2]: (gguf / "support-BF16.gguf",),
        BARE[3]: (gguf / "support-BF16.gguf",),
    }
    env = converter_env()
    measured = {}
    drop("support-Q8_0.gguf", "support-Q4_K_M.gguf")
    for job, cmd in steps:
        if job == BARE[1]:
            drop("support-BF16.gguf")
        if job == BARE[0]:
            shutil.rmtree(res / "merged", ignore_errors=True)
        read_into_page_cache(*inputs[job])
        log.info("bare tool for %s: %s", job, " ".join(cmd))
        wall, rss = measure_child(cmd, env=env)
        measured[job] = {"wall_s": round(wall, 2), "peak_rss_mb": round(rss)}
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
    shutil.rmtree(out, ignore_errors=True)
    return measured


def lora_only_revision(base: Path, adapter: Path, text: Path, work: Path, cores: int, budget_mb) -> dict:
    """A LoRA-only build (the base's GGUFs, the first revision), then a retrained adapter (its bytes changed):
    the rerun's wall time is what a new revision costs, from the change to the registered LoRA GGUF."""
    from safetensors.numpy import load_file, save_file

    own = work / "adapter"
    shutil.rmtree(own, ignore_errors=True)
    shutil.copytree(adapter, own)
    cfg = workflow_config(base, own, text, budget_mb)
    cfg.update(merge={"enabled": False}, lora={"enabled": True})
    _write_config(work, cfg)
    rc, first = _snakemake(work, cores)
    if rc != 0:
        return {"first_rc": rc, "first_s": round(first, 1)}
    first_jobs = job_resources(work)
    weights = own / "adapter_model.safetensors"

    def revision() -> tuple[int, float, list[dict]]:
        tensors = load_file(weights)
        key = next(k for k in tensors if "lora_B" in k)
        tensors[key] = tensors[key] + np.float32(1e-3)  # a retrained adapter: other bytes, same shapes
        save_file(tensors, weights, metadata={"format": "pt"})
        for f in (work / "logs").rglob("*.log"):
            f.unlink()  # the revision's own jobs are what job_resources reads next
        rc, wall = _snakemake(work, cores)
        return rc, wall, job_resources(work)

    rc, rev, jobs = revision()
    out = {
        "first_rc": 0,
        "first_s": round(first, 1),
        "first_jobs": first_jobs,
        "revision_rc": rc,
        "revision_s": round(rev, 1),
        "revision_jobs": jobs,
    }
    if rc == 0:  # the same with the adapter's PEFT evaluation too, which a LoRA-only revision skips by default
        cfg["evaluation"]["skip"] = []
        _write_config(work, cfg)
        rc, rev, jobs = revision()
        out.update(with_adapter_rc=rc, with_adapter_s=round(rev, 1), with_adapter_jobs=jobs)
    return out


def run_benchmark(
    cache: Path,
    work: Path,
    out: Path,
    cores: int = 2,
    cfg: dict = CONFIG,
    budget_mb: float | None = None,
    parts: tuple[str, ...] = ("chain", "lora-only"),
    **shard,
) -> dict:
    """Generate (or reuse) the model; run the chain and the bare tools beside it, and a LoRA-only revision (the
    ``parts`` asked for); write every measurement to ``out``."""
    cache.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base, adapter = make_llama31_8b(cache, cfg=cfg, **shard)
    gen_s = time.perf_counter() - t0
    text = work / "heldout.txt"
    text.write_text(CHECK_TEXT * 3, encoding="utf-8")
    res = {
        "model": "Llama-3.1-8B-Instruct config, synthetic bf16 weights" if cfg is CONFIG else "a smaller config",
        "config": cfg,
        "base_bytes": sum(f.stat().st_size for f in base.glob("*.safetensors")),
        "cores": cores,
        "generate_s": round(gen_s, 1),
        "parts": list(parts),
    }
    if "chain" in parts:
        chain = work / "chain"
        shutil.rmtree(chain, ignore_errors=True)  # every job runs: a rerun would otherwise keep an earlier reference
        _write_config(chain, workflow_config(base, adapter, text, budget_mb))
        rc, wall = _snakemake(chain, cores)
        jobs = job_resources(chain)
        res.update(
            workflow_s=round(wall, 1),
            workflow_rc=rc,
            max_peak_anon_mb=max((j["peak_anon_mb"] for j in jobs), default=None),
            max_peak_rss_mb=max((j["peak_rss_mb"] for j in jobs), default=None),
            jobs=jobs,
        )
        if rc != 0:
            write_text_atomic(out, json.dumps(res, indent=2) + "\n")
            return res
        # the bare tools replace the chain's models one at a time: room for the base's own GGUFs after them
        bare = bare_tools(base, adapter, chain, threads=cores)
        by_job = {f"{j['rule']} {j['job']}": j for j in jobs}
        res["bare"] = {
            job: {**b, "job_s": by_job[job]["wall_s"], "ratio": round(by_job[job]["wall_s"] / b["wall_s"], 2)}
            for job, b in bare.items()
        }
        bare_sum = sum(b["wall_s"] for b in bare.values())
        res["bare_sum_s"] = round(bare_sum, 1)
        res["chain_vs_bare"] = round(wall / bare_sum, 2)
    if "lora-only" in parts:
        res["lora_only"] = lora_only_revision(base, adapter, text, work / "lora-only", cores, budget_mb)
    write_text_atomic(out, json.dumps(res, indent=2) + "\n")
    return res


def summary(res: dict) -> str:
    """The tables ``make bench-8b`` prints."""
    lines = [table(res["jobs"]), ""] if "jobs" in res else []
    if "bare" in res:
        lines += ["| job | job s | bare tool s | ratio |", "|---|---|---|---|"]
        for job, b in res["bare"].items():
            lines.append(f"| {job} | {b['job_s']:.0f} | {b['wall_s']:.0f} | {b['ratio']:.2f} |")
        lines.append(
            f"| the whole chain (every job) | {res['workflow_s']:.0f} | {res['bare_sum_s']:.0f} | "
            f"{res['chain_vs_bare']:.2f} |"
        )
    lo = res.get("lora_only")
    if lo and lo.get("revision_rc") == 0:
        lines += ["", table(lo["revision_jobs"])]
        lines.append(
            f"LoRA-only: first build (the base's GGUFs) {lo['first_s'] / 60:.1f} min; a new revision, from the "
            f"changed adapter to its registered LoRA GGUF, {lo['revision_s'] / 60:.1f} min"
        )
        if lo.get("with_adapter_rc") == 0:
            lines.append(
                "the same with the adapter's PEFT evaluation too (evaluation.skip: []): "
                f"{lo['with_adapter_s'] / 60:.1f} min"
            )
        elif "with_adapter_rc" in lo:
            lines.append("the revision with the adapter's PEFT evaluation (evaluation.skip: []) FAILED")
    elif lo:
        lines.append(f"LoRA-only part FAILED: {lo}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.llama8b")
    ap.add_argument("--cache", default="results/bench/cache")
    ap.add_argument("--work", default="results/bench/8b")
    ap.add_argument("--out", default="results/bench/8b.json")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument(
        "--parts",
        nargs="+",
        choices=["chain", "lora-only"],
        default=["chain", "lora-only"],
        help="the default chain with its bare tools (33 min at 8B on a 2-core EPYC), a LoRA-only revision (30 min)",
    )
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    res = run_benchmark(Path(a.cache).resolve(), Path(a.work).resolve(), Path(a.out), a.cores, parts=tuple(a.parts))
    print(summary(res))
    if "workflow_rc" in res:
        done = "completed" if res["workflow_rc"] == 0 else "FAILED"
        print(
            f"workflow {done} in {res['workflow_s'] / 60:.1f} min; peak anonymous RSS of any job "
            f"{res['max_peak_anon_mb']} MB; results in {a.out}"
        )
    lo = res.get("lora_only") or {}
    return (
        res.get("workflow_rc", 0) or lo.get("first_rc", 0) or lo.get("revision_rc", 0) or lo.get("with_adapter_rc", 0)
    )


if __name__ == "__main__":
    sys.exit(main())
