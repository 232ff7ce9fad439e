"""Knowledge distillation: train a (pruned) student to match the teacher's next-token distribution."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from ..checks import write_sidecar
from ..device import torch_device
from ..errors import PipelineError
from ..io.publish import atomic_dir, atomic_file
from .prune import SIDE_FILES

log = logging.getLogger(__name__)


def kl_teacher_student(student_logits, teacher_logits):
    """Mean over tokens of KL(teacher || student), in nats."""
    import torch.nn.functional as F

    s = F.log_softmax(student_logits.float(), dim=-1).flatten(0, -2)
    t = F.log_softmax(teacher_logits.float(), dim=-1).flatten(0, -2)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def distill(
    teacher_dir,
    student_dir,
    text,
    out_dir,
    curve_json,
    steps: int = 60,
    lr: float = 1e-4,
    batch: int = 2,
    n_ctx: int = 256,
    seed: int = 0,
    threads: int = 1,
) -> dict:
    """Train the student in ``student_dir`` on KL(teacher || student) over windows of ``text`` (cycled, in a
    seeded order) for ``steps`` steps of AdamW; write it (its source dtype) to ``out_dir`` and the loss curve to
    ``curve_json``."""
    import torch
    from tqdm import tqdm

    from ..evaluation.windows import token_windows
    from ..models.hf import load_hf_model

    if steps < 1 or batch < 1 or lr <= 0:
        raise PipelineError(f"distillation needs steps >= 1, batch >= 1, lr > 0 (got {steps}, {batch}, {lr})")
    torch.manual_seed(seed)
    windows = token_windows(teacher_dir, text, n_ctx, max_tokens=steps * batch * n_ctx)
    if len(windows) < batch:
        raise PipelineError(f"{text}: too short for one batch of {batch} windows of {n_ctx} tokens")
    order = np.random.default_rng(seed).permutation(len(windows))
    device = torch_device()  # the config's device (the GPU path is unmeasured here: no GPU)
    teacher = load_hf_model(teacher_dir, dtype=torch.float32).eval().to(device)
    student = load_hf_model(student_dir, dtype=torch.float32).to(device)
    out_dtype = load_dtype(student_dir)
    student.train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    curve = []
    bar = tqdm(range(steps), desc="distilling", unit="step")
    for step in bar:
        idx = [order[(step * batch + k) % len(windows)] for k in range(batch)]
        x = torch.from_numpy(windows[idx].astype(np.int64)).to(device)
        with torch.no_grad():
            t = teacher(x).logits
        loss = kl_teacher_student(student(x).logits, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(float(loss))
        bar.set_postfix(kl=f"{curve[-1]:.4f}")
        if not np.isfinite(curve[-1]):
            raise PipelineError(f"distillation diverged at step {step} (loss {curve[-1]}): lower the learning rate")
    student.eval()
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        student.to("cpu", out_dtype).save_pretrained(str(tmp))
        for name in SIDE_FILES:
            if (Path(student_dir) / name).exists() and not (tmp / name).exists():
                shutil.copy2(Path(student_dir) / name, tmp / name)
    summary = {
        "teacher": str(teacher_dir),
        "student": str(student_dir),
        "text": str(text),
        "steps": steps,
        "lr": lr,
        "batch": batch,
        "n_ctx": n_ctx,
        "seed": seed,
        "windows": int(len(windows)),
        "loss": curve,
        "loss_first": curve[0],
        "loss_last_10": float(np.mean(curve[-10:])),
        "dtype": str(out_dtype).removeprefix("torch."),
    }
    write_sidecar(curve_json, summary)
    _plot(curve, Path(curve_json).with_suffix(".svg"))
    log.info("distilled %s: KL %.4f -> %.4f (mean of last 10 steps)", out_dir, curve[0], summary["loss_last_10"])
    return summary


def load_dtype(model_dir):
    import torch

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return getattr(torch, name)


def _plot(curve: list[float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(curve) + 1), curve)
    ax.set_xlabel("step")
    ax.set_ylabel("KL(teacher || student), nats/token")
    ax.set_title("distillation loss")
    fig.tight_layout()
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="svg")
    plt.close(fig)
