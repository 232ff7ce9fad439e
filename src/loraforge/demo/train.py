"""LoRA training on a text, seeded: how the demo makes its adapters (and the tests make better and worse
revisions). Causal-LM loss on random windows of the text, AdamW with warm-up and linear decay, a progress bar."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ..errors import PipelineError
from ..io.publish import atomic_dir

log = logging.getLogger(__name__)

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def train_lora(
    base_dir: str | os.PathLike,
    text_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    steps: int = 30,
    r: int = 8,
    lr: float = 1e-3,
    seq: int = 128,
    batch: int = 4,
    seed: int = 0,
    targets: list[str] | None = None,
) -> dict:
    """Train a LoRA adapter (every linear layer of a Llama-style model by default) on ``text_file``; save a PEFT
    adapter directory. Returns the training record (also written to training.json beside the adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    text = Path(text_file).read_text(encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    ids = torch.tensor(tok(text, add_special_tokens=False).input_ids, dtype=torch.long)
    if ids.numel() <= seq + 1:
        raise PipelineError(f"{text_file}: {ids.numel()} tokens, too short to train on windows of {seq}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32, local_files_only=True)
    model = get_peft_model(
        model,
        LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules=targets or LINEAR),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.1, 1 - s / steps))
    g = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    bar = tqdm(range(steps), desc=f"LoRA on {Path(text_file).name}", unit="step", mininterval=5)
    for _ in bar:
        starts = torch.randint(0, ids.numel() - seq, (batch,), generator=g).tolist()
        x = torch.stack([ids[s : s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        bar.set_postfix(loss=losses[-1])
    record = {
        "text": Path(text_file).name,
        "steps": steps,
        "r": r,
        "lr": lr,
        "seq": seq,
        "batch": batch,
        "seed": seed,
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "losses": losses,
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        # PEFT writes target_modules from a set (order follows the hash seed): sorted, same bytes every run
        cfg_path = tmp / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["target_modules"] = sorted(cfg["target_modules"])
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("LoRA trained in %.1f s on %s: loss %.3f -> %.3f", time.time() - t0, text_file, losses[0], losses[-1])
    return record
