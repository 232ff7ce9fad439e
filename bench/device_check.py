"""The torch stages on a GPU against the same stages on the CPU, side by side in one run.

    python -m bench.device_check --tokenizer DIR --out results/bench/device.json

A Llama-shaped bfloat16 model (hidden 1024, 8 layers, the tokenizer in DIR) and a PEFT LoRA adapter (r 16, every
linear layer, non-zero B) are built in a temporary directory; then, for ``device`` cpu and cuda in turn (the
config key ``device``, ``$LORAFORGE_DEVICE``): the float32 reference of the adapter through PEFT, unmerged
(``compute_reference``), and the merged model's evaluation against the CPU's reference. Printed per stage: seconds
on each device, and how far the GPU's numbers are from the CPU's (mean KLD, top-1 agreement, PPL). Nothing of
llama.cpp: its CUDA build is another compilation (docs/cluster.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def build(root: Path, tokenizer: Path) -> tuple[Path, Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from loraforge.demo import corpora

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        initializer_range=0.05,
        bos_token_id=1,
        eos_token_id=2,
    )
    base, adapter = root / "base", root / "adapter"
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(str(base))
    for f in tokenizer.iterdir():
        shutil.copy(f, base / f.name)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.02)
    peft.save_pretrained(str(adapter))
    text = root / "code.txt"
    text.write_text(corpora()["code"]["heldout"][:16_000])
    return base, adapter, text


def on(device: str):
    from loraforge import device as dev

    os.environ[dev.ENV] = device
    dev.torch_device.cache_clear()
    return dev.torch_device()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.device_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer directory (tokenizer.json ...)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    import torch

    from loraforge import compute_reference, evaluate, merge

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to compare", file=sys.stderr)
        return 2
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "stages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, adapter, text = build(root, a.tokenizer)
        merged = root / "merged"
        t = time.perf_counter()
        merge(base, [adapter], merged)
        out["stages"]["merge (streaming, CPU)"] = {"seconds": round(time.perf_counter() - t, 2)}
        texts = {"code": str(text)}
        specs = [{"path": str(adapter), "weight": 1.0}]
        refs = {}
        for device in ("cpu", "cuda"):
            assert on(device) == device
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            compute_reference(base, texts, root / f"ref-{device}.safetensors", n_ctx=512, adapters=specs)
            refs[device] = time.perf_counter() - t
        # the GPU's reference scored against the CPU's: the same tokens, float32 on both
        on("cuda")
        t = time.perf_counter()
        gpu_peft = evaluate("peft", reference=root / "ref-cpu.safetensors", base_dir=base, adapters=specs)
        peft_s = time.perf_counter() - t
        on("cpu")
        t = time.perf_counter()
        cpu_peft = evaluate("peft", reference=root / "ref-cpu.safetensors", base_dir=base, adapters=specs)
        peft_cpu_s = time.perf_counter() - t
        on("cuda")
        gpu_merged = evaluate("hf", merged, reference=root / "ref-cpu.safetensors")
        on("cpu")
        cpu_merged = evaluate("hf", merged, reference=root / "ref-cpu.safetensors")
        out["stages"]["reference (adapter through PEFT, float32)"] = {
            "seconds_cpu": round(refs["cpu"], 2),
            "seconds_gpu": round(refs["cuda"], 2),
        }
        for name, g, c, gs, cs in (
            ("adapter through PEFT, evaluated", gpu_peft, cpu_peft, peft_s, peft_cpu_s),
            ("merged model, evaluated", gpu_merged, cpu_merged, None, None),
        ):
            out["stages"][name] = {
                "gpu": {"mean_kld": g.mean_kld, "top1": g.top1_agreement, "ppl": g.ppl(), "compute": g.compute_dtype},
                "cpu": {"mean_kld": c.mean_kld, "top1": c.top1_agreement, "ppl": c.ppl(), "compute": c.compute_dtype},
                **({"seconds_gpu": round(gs, 2), "seconds_cpu": round(cs, 2)} if gs else {}),
                "scored_tokens": g.scored_tokens,
            }
    print(json.dumps(out, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
