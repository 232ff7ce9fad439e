"""Calibrate (or, for FP8, cast), save and check one compressed-tensors checkpoint: the calibration windows, the worker
run in llm-compressor's environment, the reload check and the sidecar."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from ..errors import PipelineError
from ..io.hashing import tree_fingerprint
from ..io.publish import atomic_dir
from ..models.hf import load_checkpoint
from .environment import tool_python, tool_versions
from .schemes import IGNORE, group_size_for, scheme
from .schemes import n_params as count_params

log = logging.getLogger(__name__)

PROBE_TOKENS = 32


def calibration_windows(tokenizer, text_file, samples: int, seq_len: int) -> list[list[int]]:
    """``samples`` consecutive windows of ``seq_len`` tokens of the calibration text (each with the tokenizer's
    BOS where it adds one); too short a text is refused before any model is loaded."""
    from ..evaluation.windows import read_text

    prefix = tokenizer("", add_special_tokens=True)["input_ids"]
    body = seq_len - len(prefix)
    ids = tokenizer(read_text(text_file), add_special_tokens=False)["input_ids"]
    if len(ids) < samples * body:
        raise PipelineError(
            f"{text_file}: {len(ids)} tokens, too short for hf_quant's {samples} samples of {seq_len} tokens "
            f"({samples * body} needed); give a longer text or fewer samples"
        )
    return [prefix + ids[i * body : (i + 1) * body] for i in range(samples)]


def probe_logprobs(model, tokens: list[int]) -> list[float]:
    """The log-prob the model gives each next token of ``tokens``: what a sidecar records to be re-checked."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float()
    lp = torch.log_softmax(logits[:-1], dim=-1)
    return [round(float(v), 5) for v in lp.gather(1, torch.tensor(tokens[1:])[:, None])[:, 0]]


def quantize_checkpoint(
    model_dir,
    out_dir,
    sidecar,
    scheme_name: str,
    text,
    samples: int = 16,
    seq_len: int = 512,
    group_size: int | None = None,
    threads: int = 1,
    max_logit_diff: float = 0.05,
) -> dict:
    """Calibrate and write one compressed-tensors checkpoint of ``model_dir`` (only read) to ``out_dir``, then its
    sidecar. Bad input is refused before any model loads; ``out_dir`` appears only when checked: loaded back from
    disk by this stack, its logits on the probe (the first window's first 32 tokens) must be the calibrated model's."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from ..progress import run_logged

    s = scheme(scheme_name)
    python = tool_python()
    gs = group_size_for(model_dir, group_size) if s.grouped else None  # W8A8: a scale per row
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    windows = calibration_windows(tokenizer, text, samples, seq_len)
    probe = windows[0][:PROBE_TOKENS]
    log.info(
        "%s of %s: %s, %s, in %s",
        scheme_name,
        model_dir,
        f"group size {gs}" if gs else "a scale per row",
        f"{samples} calibration windows of {seq_len} tokens from {text}" if s.calibrated else "no calibration",
        python,
    )
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory(prefix="loraforge-hfq-") as work:
        work = Path(work)
        request = {
            "model_dir": str(Path(model_dir).resolve()),
            "out_dir": str(tmp),
            "scheme": scheme_name,
            "method": s.method,
            "bits": s.bits,
            "symmetric": s.symmetric,
            "number": s.number,
            "weights": s.weights,
            "activations": s.activations,
            "group_size": gs,
            "ignore": list(IGNORE),
            "windows": windows,
            "threads": threads,
            "check_tokens": probe,
            "logits": str(work / "logits.npy"),
            "result": str(work / "result.json"),
        }
        (work / "request.json").write_text(json.dumps(request))
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads)), "TOKENIZERS_PARALLELISM": "false"}
        code, output = run_logged(
            [str(python), str(Path(__file__).with_name("worker.py")), str(work / "request.json")],
            f"llm-compressor {scheme_name} of {model_dir}",
            env=env,
        )
        if code != 0:
            last = [ln for ln in output.strip().splitlines() if ln.strip()][-1:] or [f"exit status {code}"]
            raise PipelineError(f"{model_dir}: {last[0].strip()}")
        seconds = json.loads((work / "result.json").read_text())["seconds"]
        calibrated = torch.from_numpy(np.load(work / "logits.npy"))
        reloaded = load_checkpoint(tmp)
        with torch.no_grad():
            got = reloaded(torch.tensor([probe])).logits[0].float()  # every weight takes part in every token
        diff = float((got - calibrated).abs().max())
        top1 = float((got.argmax(-1) == calibrated.argmax(-1)).float().mean())
        log.info("%s: reloaded from disk, max |logit diff| %.3g, top-1 agreement %.4f", scheme_name, diff, top1)
        if not torch.isfinite(got).all() or diff > max_logit_diff:
            raise PipelineError(
                f"{out_dir}: the saved {scheme_name} checkpoint does not reproduce the calibrated model (max logit "
                f"difference {diff:.3g} > {max_logit_diff}); nothing published"
            )
        probe_lps = probe_logprobs(reloaded, probe)
        del reloaded
    size = sum(f.stat().st_size for f in Path(out_dir).glob("*.safetensors"))
    n_params = count_params(model_dir)
    summary = {
        "scheme": scheme_name,
        "method": s.method,
        "bits": s.bits,
        "symmetric": s.symmetric,
        "number": s.number,
        "group_size": gs,
        "activations": f"{s.number}{s.bits} per token, dynamic" if s.activations else None,
        "ignored": list(IGNORE),
        "format": json.loads((Path(out_dir) / "config.json").read_text())["quantization_config"].get("format"),
        "source": str(model_dir),
        "calibration": (
            {"text": str(text), "samples": samples, "seq_len": seq_len, "tokens": samples * seq_len}
            if s.calibrated
            else None
        ),
        "seconds": seconds,
        "size_bytes": size,
        "n_params": n_params,
        "bits_per_weight": round(size * 8 / n_params, 4),
        "check": {"max_logit_diff": diff, "top1_agreement": top1, "probe_tokens": probe, "probe_logprobs": probe_lps},
        "sha256": tree_fingerprint(out_dir),
        "tools": tool_versions(python),
    }
    from ..checks import write_sidecar

    write_sidecar(sidecar, summary)
    log.info(
        "%s: %s, %.1f MB, %.2f bits/weight, calibrated in %.0f s",
        out_dir,
        scheme_name,
        size / 1e6,
        summary["bits_per_weight"],
        seconds,
    )
    return summary
