"""GPU-serving checkpoints: 4-bit GPTQ and AWQ weights in the compressed-tensors format that vLLM (and SGLang, TGI)
serve, made by llm-compressor (vLLM's own quantization library) from an HF model directory, calibrated on the
calibration text.

llm-compressor 0.14 caps transformers at 5.17, older than the rest of loraforge runs on, so it lives in an
environment of its own (``python -m loraforge.hfquant setup``, run by ``make setup-hfquant``, in the cache beside the
llama.cpp build; ``$LORAFORGE_LLMCOMPRESSOR_PYTHON`` names another). The calibration runs there
(:mod:`loraforge.hfquant_worker`); everything else, the reload check and the evaluation included, runs in
loraforge's own stack, which loads the checkpoints through transformers and compressed-tensors as a serving stack
does.

A checkpoint is checked before it is published: it is loaded back from disk through transformers (decompressed)
and its logits on a probe window must match the calibrated model's in memory. The sidecar
(``<checkpoint>.json``) records the scheme, group size, calibration, time, size, bits per weight, the content
fingerprint of the directory, and the probe's next-token log-probs, which anyone can re-check later
(:func:`probe_logprobs`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from .errors import PipelineError
from .io.hashing import tree_fingerprint
from .io.publish import atomic_dir
from .models.hf import load_checkpoint

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Scheme:
    method: str  # gptq | awq
    bits: int
    symmetric: bool
    what: str


# Weight-only 4-bit (activations stay 16-bit): vLLM runs both with its Marlin / Machete kernels.
SCHEMES = {
    "GPTQ-W4A16": Scheme("gptq", 4, True, "GPTQ, 4-bit symmetric weights, 16-bit activations"),
    "AWQ-W4A16": Scheme(
        "awq", 4, False, "AWQ scaling, then 4-bit asymmetric weights (zero points), 16-bit activations"
    ),
}
GROUP_SIZES = (128, 64, 32)  # tried in order when none is given: the largest that divides every quantized row
IGNORE = ("lm_head",)  # kept in 16 bits, as llm-compressor's examples and vLLM's checkpoints do
PROBE_TOKENS = 32


def scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise PipelineError(f"hf_quant scheme {name!r} is not one of {', '.join(SCHEMES)}")
    return SCHEMES[name]


def linear_widths(model_dir) -> dict[str, int]:
    """The input width (columns) of every 2-D ``*_proj.weight`` in the decoder layers: what a quantization group
    must divide. From the safetensors headers only."""
    from .models.streamed import checkpoint_index

    out = {}
    for name, info in checkpoint_index(model_dir).items():
        if ".layers." in name and name.endswith("_proj.weight") and len(info.shape) == 2:
            out[name] = int(info.shape[1])
    if not out:
        raise PipelineError(f"{model_dir}: no decoder *_proj.weight tensors found to quantize")
    return out


def group_size_for(model_dir, requested: int | None = None) -> int:
    """``requested`` if it divides every quantized row of ``model_dir``, else one line; or, with none, the
    largest of 128, 64, 32 that does."""
    widths = linear_widths(model_dir)
    sizes = sorted(set(widths.values()))
    if requested is not None:
        bad = [w for w in sizes if w % requested]
        if bad:
            name = next(n for n, w in widths.items() if w == bad[0])
            raise PipelineError(
                f"{model_dir}: hf_quant.group_size {requested} does not divide {name}'s rows of {bad[0]} "
                f"(row widths: {', '.join(map(str, sizes))}); use a divisor such as "
                f"{next((g for g in GROUP_SIZES if all(w % g == 0 for w in sizes)), 'none of 128/64/32')}"
            )
        return requested
    for g in GROUP_SIZES:
        if all(w % g == 0 for w in sizes):
            return g
    raise PipelineError(
        f"{model_dir}: no group size of {', '.join(map(str, GROUP_SIZES))} divides every quantized row "
        f"(widths {', '.join(map(str, sizes))}); set hf_quant.group_size"
    )


def calibration_windows(tokenizer, text_file, samples: int, seq_len: int) -> list[list[int]]:
    """``samples`` consecutive windows of ``seq_len`` tokens of the calibration text (each with the tokenizer's
    BOS where it adds one); too short a text is refused before any model is loaded."""
    from .evaluation.windows import read_text

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


def _n_params(model_dir) -> int:
    from .models.streamed import checkpoint_index

    n = 0
    for info in checkpoint_index(model_dir).values():
        k = 1
        for d in info.shape:
            k *= int(d)
        n += k
    return n


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

    from .progress import run_logged

    s = scheme(scheme_name)
    python = tool_python()
    gs = group_size_for(model_dir, group_size)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    windows = calibration_windows(tokenizer, text, samples, seq_len)
    probe = windows[0][:PROBE_TOKENS]
    log.info(
        "%s of %s: group size %d, %d calibration windows of %d tokens from %s, in %s",
        scheme_name,
        model_dir,
        gs,
        samples,
        seq_len,
        text,
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
            [str(python), str(Path(__file__).with_name("hfquant_worker.py")), str(work / "request.json")],
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
    n_params = _n_params(model_dir)
    summary = {
        "scheme": scheme_name,
        "method": s.method,
        "bits": s.bits,
        "symmetric": s.symmetric,
        "group_size": gs,
        "ignored": list(IGNORE),
        "format": json.loads((Path(out_dir) / "config.json").read_text())["quantization_config"].get("format"),
        "source": str(model_dir),
        "calibration": {"text": str(text), "samples": samples, "seq_len": seq_len, "tokens": samples * seq_len},
        "seconds": seconds,
        "size_bytes": size,
        "n_params": n_params,
        "bits_per_weight": round(size * 8 / n_params, 4),
        "check": {"max_logit_diff": diff, "top1_agreement": top1, "probe_tokens": probe, "probe_logprobs": probe_lps},
        "sha256": tree_fingerprint(out_dir),
        "tools": tool_versions(python),
    }
    from .checks import write_sidecar

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


# --- llm-compressor's environment ------------------------------------------------------------------------------

LLMCOMPRESSOR = "llmcompressor==0.14.0.1"
PYTHON_ENV = "LORAFORGE_LLMCOMPRESSOR_PYTHON"


def env_dir() -> Path:
    from .llamacpp.toolchain import cache_root

    return cache_root() / LLMCOMPRESSOR.replace("==", "-")


def tool_python() -> Path:
    """The Python that has llm-compressor: ``$LORAFORGE_LLMCOMPRESSOR_PYTHON``, else the environment that
    ``python -m loraforge.hfquant setup`` built; else one line saying how to get it."""
    if os.environ.get(PYTHON_ENV):
        p = Path(os.environ[PYTHON_ENV])
        if not p.is_file():
            raise PipelineError(f"${PYTHON_ENV}={p}: no such Python")
        return p
    d = env_dir()
    if not (d / ".complete").is_file():
        raise PipelineError(
            f"hf_quant needs llm-compressor's environment, not built at {d}: run `python -m loraforge.hfquant setup` "
            "(make setup-hfquant does)"
        )
    return d / "bin" / "python"


def tool_versions(python) -> dict:
    import subprocess

    code = (
        "import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
        "('llmcompressor', 'compressed-tensors', 'transformers', 'torch')}))"
    )
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)


def setup_env(torch_spec: str | None = None, force: bool = False) -> Path:
    """A virtual environment with llm-compressor and its pinned transformers, in the cache (once). torch: the same
    version as this environment's (the CPU wheel where this one has it), unless ``torch_spec`` is given."""
    import shutil
    import subprocess
    import sys
    from importlib.metadata import version

    from .progress import run_logged

    d = env_dir()
    if (d / ".complete").is_file() and not force:
        log.info("llm-compressor's environment: %s (already built)", d)
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)
    pip = [str(d / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    torch_version = version("torch")
    spec = torch_spec or f"torch=={torch_version.split('+')[0]}"
    for what, cmd in (("torch", [*pip, spec]), ("llm-compressor", [*pip, LLMCOMPRESSOR, "numpy"])):
        code, output = run_logged(cmd, f"installing {what} into {d}")
        if code != 0:
            tail = [ln for ln in output.strip().splitlines() if ln.strip()][-1:] or [f"exit status {code}"]
            raise PipelineError(f"{d}: installing {what} failed: {tail[0]}")
    (d / ".complete").write_text(json.dumps(tool_versions(d / "bin" / "python")) + "\n")
    log.info("llm-compressor's environment: %s", d)
    return d


def main(argv: list[str] | None = None) -> int:
    import argparse
    import logging as logging_

    parser = argparse.ArgumentParser(prog="python -m loraforge.hfquant", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="build llm-compressor's environment in the cache (once)")
    setup.add_argument("--torch", help="torch requirement for it (default: this environment's torch version)")
    setup.add_argument("--force", action="store_true", help="rebuild it")
    sub.add_parser("where", help="print the Python that runs llm-compressor")
    args = parser.parse_args(argv)
    logging_.basicConfig(level=logging_.INFO, format="%(message)s")
    try:
        if args.command == "setup":
            setup_env(args.torch, args.force)
        else:
            print(tool_python())
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def vllm_lora_refusal(adapters) -> str | None:
    """Why an adapter (a stack spec) cannot be served by vLLM's LoRA (``--enable-lora``), or None. vLLM's
    ``PEFTHelper`` refuses DoRA, ``modules_to_save`` and adapter biases; a request takes one adapter, not a stack."""
    from .preflight import as_specs, inspect_adapter

    specs = as_specs(adapters)
    if len(specs) > 1:
        return "a stack of several adapters: a vLLM request applies one LoRA"
    ad = inspect_adapter(specs[0].path)
    cfg = ad.config
    if cfg.get("use_dora") or any(lm.magnitude_key for lm in ad.lora.values()):
        return "DoRA: vLLM does not support it"
    if cfg.get("modules_to_save") or ad.replaced:
        return "modules_to_save: vLLM serves only LoRA deltas"
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        return "adapter biases: vLLM does not support them"
    return None


if __name__ == "__main__":
    sys.exit(main())
