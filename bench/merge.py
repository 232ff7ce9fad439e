"""Benchmarks measured side by side in one run (ratios, not absolute timings, are what to compare).

    python -m bench.merge merge --size-gb 1 4 --out results/bench/merge.json

For each size: a synthetic Llama-shaped bf16 base (hidden 2048, intermediate 5632, vocab 32000; layers chosen
to reach the size; Llama 2's real tokenizer) and a LoRA r=16 adapter on every linear layer are generated once
and cached. Then, each in its own child process, with the base already in the page cache: a durable write of the
base's bytes (read and written, every file and the directory fsync'd, as the merge publishes its output: the
physical floor of any merge on this disk), PEFT ``merge_and_unload`` + save, and the streaming merge. Wall time
and the child's peak RSS (``wait4``) of each.

``cp -r`` is not the floor: it returns before the data is on disk, and on a sparse or reflinking filesystem it
writes nothing at all (0.27 s for 0.98 GB here, faster than the disk can write).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from loraforge.io.publish import atomic_dir, write_text_atomic
from loraforge.io.safetensors import encode, write_header
from loraforge.merging.streaming import plan_shards, shard_name, write_index

from .families import FAMILIES, build_tokenizer

log = logging.getLogger(__name__)

HIDDEN, INTER, VOCAB, HEADS = 2048, 5632, 32000, 16
LINEAR = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def _layer_shapes(i: int) -> dict[str, tuple[int, int] | tuple[int]]:
    p = f"model.layers.{i}."
    shapes: dict = {p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,)}
    for m in LINEAR["self_attn"]:
        shapes[f"{p}self_attn.{m}.weight"] = (HIDDEN, HIDDEN)
    shapes[f"{p}mlp.gate_proj.weight"] = (INTER, HIDDEN)
    shapes[f"{p}mlp.up_proj.weight"] = (INTER, HIDDEN)
    shapes[f"{p}mlp.down_proj.weight"] = (HIDDEN, INTER)
    return shapes


def _layers_for(size_gb: float) -> int:
    fixed = 2 * VOCAB * HIDDEN * 2
    per_layer = sum(math.prod(s) for s in _layer_shapes(0).values()) * 2
    return max(1, round((size_gb * 1e9 - fixed) / per_layer))


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple, object]]) -> None:
    """tensors: name -> (dtype, shape, generator of the raw array); written one tensor at a time."""
    meta = {n: (d, s) for n, (d, s, _g) in tensors.items()}
    with open(path, "wb") as f:
        write_header(f, list(tensors), meta)
        for _n, (_d, _s, gen) in tensors.items():
            f.write(memoryview(np.ascontiguousarray(gen())).cast("B"))


def write_lora(adapter_dir: Path, tensors: dict, r: int, alpha: int, base_name: str) -> None:
    """A PEFT LoRA adapter directory on every linear layer: ``tensors`` as for :func:`write_safetensors`, and the
    adapter_config.json PEFT writes."""
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": [m for mods in LINEAR.values() for m in mods],
        "bias": "none",
        "fan_in_fan_out": False,
        "base_model_name_or_path": base_name,
    }
    with atomic_dir(adapter_dir) as tmp:
        write_safetensors(tmp / "adapter_model.safetensors", tensors)
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))


def make_synthetic(root: Path, size_gb: float, seed: int = 0) -> tuple[Path, Path]:
    """Cached synthetic base (bf16, sharded ~2 GB) and LoRA adapter; returns (base_dir, adapter_dir)."""
    layers = _layers_for(size_gb)
    base, adapter = root / f"base-{layers}L", root / f"adapter-{layers}L"
    rng = np.random.default_rng(seed)

    def bf16(shape, std=0.02):
        return lambda: encode(rng.standard_normal(shape, dtype=np.float32) * std, "BF16")

    if not base.exists():
        log.info("generating a %d-layer synthetic base in %s", layers, base)
        shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
        for i in range(layers):
            shapes.update(_layer_shapes(i))
        shapes["model.norm.weight"] = (HIDDEN,)
        shapes["lm_head.weight"] = (VOCAB, HIDDEN)
        with atomic_dir(base) as tmp:
            dtypes = {n: ("BF16", s) for n, s in shapes.items()}
            shards = plan_shards(dtypes, int(2e9))
            weight_map = {}
            for k, names in enumerate(shards, 1):
                fname = shard_name(k, len(shards))
                write_safetensors(tmp / fname, {n: ("BF16", shapes[n], bf16(shapes[n])) for n in names})
                weight_map.update(dict.fromkeys(names, fname))
            write_index(tmp, dtypes, weight_map)
            build_tokenizer(FAMILIES["llama2"], tmp)  # Llama 2's real 32000-piece tokenizer (preflight reads it)
            (tmp / "config.json").write_text(
                json.dumps(
                    {
                        "architectures": ["LlamaForCausalLM"],
                        "model_type": "llama",
                        "hidden_size": HIDDEN,
                        "intermediate_size": INTER,
                        "num_hidden_layers": layers,
                        "num_attention_heads": HEADS,
                        "num_key_value_heads": HEADS,
                        "vocab_size": VOCAB,
                        "max_position_embeddings": 2048,
                        "rms_norm_eps": 1e-5,
                        "tie_word_embeddings": False,
                        "torch_dtype": "bfloat16",
                        "bos_token_id": 1,
                        "eos_token_id": 2,
                    }
                )
            )
    if not adapter.exists():
        r = 16
        tensors = {}
        for i in range(layers):
            for blk, mods in LINEAR.items():
                for m in mods:
                    out_f, in_f = _layer_shapes(i)[f"model.layers.{i}.{blk}.{m}.weight"]
                    key = f"base_model.model.model.layers.{i}.{blk}.{m}"
                    for ab, shape in (("lora_A", (r, in_f)), ("lora_B", (out_f, r))):
                        tensors[f"{key}.{ab}.weight"] = (
                            "F32",
                            shape,
                            lambda s=shape: rng.standard_normal(s, dtype=np.float32) * 0.01,
                        )
        write_lora(adapter, tensors, r, 32, str(base))
    return base, adapter


# Linux carries a process's RSS high-water mark across exec into its child's ru_maxrss, so the child is
# started from a tiny fresh launcher, not from this (large) process.
_LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(p.pid, 0)
print(json.dumps({"wall": time.perf_counter() - t0, "rss_kb": usage.ru_maxrss,
                  "rc": os.waitstatus_to_exitcode(status)}))
"""


def measure_child(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process (with ``env``, else this process's environment)."""
    out = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, text=True, env=env)
    res = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {"rc": out.returncode}
    if res["rc"] != 0:
        raise SystemExit(f"benchmark step failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return res["wall"], res["rss_kb"] / 1024


# The bytes of every file of a directory written to a new one and made durable (fsync of each file, then of the
# directory), with plain reads and writes: no reflink, copy_file_range or sparse holes to skip the writing.
_DURABLE_WRITE = """
import os, sys
src, dst = sys.argv[1:3]
os.makedirs(dst)
for name in sorted(os.listdir(src)):
    with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
        while chunk := f.read(64 << 20):
            g.write(chunk)
        g.flush()
        os.fsync(g.fileno())
fd = os.open(dst, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
"""


def _merge_cmd(base: Path, adapter: Path, out: Path, method: str) -> list[str]:
    code = (
        f"from loraforge.merging import merge; merge({str(base)!r}, [{str(adapter)!r}], {str(out)!r}, "
        f"method={method!r}, shard_size_mb=2000)"
    )
    return [sys.executable, "-c", code]


def bench_merge(size_gb: float, cache: Path, work: Path) -> dict:
    base, adapter = make_synthetic(cache, size_gb)
    model_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    for f in base.glob("*.safetensors"):  # page cache warm for every contender alike
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass
    res = {
        "size_gb_requested": size_gb,
        "model_bytes": model_bytes,
        "layers": json.loads((base / "config.json").read_text())["num_hidden_layers"],
    }
    for name, cmd in (
        ("durable_write", [sys.executable, "-c", _DURABLE_WRITE, str(base), str(work / "durable_write")]),
        ("peft", _merge_cmd(base, adapter, work / "peft", "peft")),
        ("streaming", _merge_cmd(base, adapter, work / "streaming", "streaming")),
    ):
        shutil.rmtree(work / name, ignore_errors=True)
        wall, rss = measure_child(cmd)
        res[f"{name}_s"] = round(wall, 3)
        res[f"{name}_peak_rss_mb"] = round(rss, 1)
        shutil.rmtree(work / name, ignore_errors=True)
    res["streaming_vs_durable_write"] = round(res["streaming_s"] / res["durable_write_s"], 2)
    res["peft_vs_streaming"] = round(res["peft_s"] / res["streaming_s"], 2)
    res["streaming_rss_vs_model"] = round(res["streaming_peak_rss_mb"] * 2**20 / model_bytes, 3)
    res["peft_rss_vs_model"] = round(res["peft_peak_rss_mb"] * 2**20 / model_bytes, 3)
    return res


def summary(r: dict) -> str:
    return (
        f"{r['model_bytes'] / 1e9:.2f} GB bf16: streaming {r['streaming_s']:.2f} s = "
        f"{r['streaming_vs_durable_write']}x a durable write of its bytes ({r['durable_write_s']:.2f} s), "
        f"{r['peft_vs_streaming']}x faster than PEFT ({r['peft_s']:.2f} s); "
        f"peak RSS streaming {r['streaming_peak_rss_mb']:.0f} MB ({r['streaming_rss_vs_model']}x model) vs "
        f"PEFT {r['peft_peak_rss_mb']:.0f} MB ({r['peft_rss_vs_model']}x)"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.merge")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="durable write vs. PEFT merge vs. streaming merge")
    m.add_argument("--size-gb", type=float, nargs="+", default=[1.0])
    m.add_argument("--out", default="results/bench/merge.json")
    m.add_argument("--cache", default="results/bench/cache")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache, out = Path(a.cache), Path(a.out)
    cache.mkdir(parents=True, exist_ok=True)
    work = out.parent / "work"
    work.mkdir(parents=True, exist_ok=True)
    results = [bench_merge(s, cache, work) for s in a.size_gb]
    shutil.rmtree(work, ignore_errors=True)
    write_text_atomic(out, json.dumps(results[0] if len(results) == 1 else results, indent=2) + "\n")
    for r in results:
        print(summary(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
