"""A PEFT adapter -> a LoRA GGUF with llama.cpp's convert_lora_to_gguf.py, for llama.cpp's ``--lora`` and
Ollama's ``ADAPTER``: megabytes beside a quantized base instead of a merged model per adapter.

llama.cpp applies every LoRA tensor pair with the scale alpha / rank, alpha being the one ``lora_alpha`` the
converter writes. PEFT's scale differs where the adapter uses rsLoRA (alpha / sqrt(rank)) or per-module
rank/alpha patterns, and a stack weight multiplies it: the converter ignores all three. Such an adapter is
transformed exactly before conversion, by folding the difference into B:

    B' = B * s_peft(module) * weight * rank(module) / lora_alpha

so that llama.cpp's lora_alpha / rank(module) times B' A is PEFT's delta. What no LoRA GGUF can express is
refused with one line, and the merged form still builds: DoRA (magnitude vectors), tensors replaced wholesale
(modules_to_save, resized embeddings), and stacks of several adapters.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..errors import PipelineError
from ..io.publish import atomic_file
from ..io.safetensors import TensorReader
from ..llamacpp.toolchain import locate
from ..llamacpp.tools import converter_env, run_tool
from ..merging.lora_math import lora_scaling, pattern_value
from ..preflight import Adapter, as_specs, inspect_adapter

log = logging.getLogger(__name__)

OUTTYPES = ("f32", "f16", "bf16")


def refusal(adapters) -> str | None:
    """Why ``adapters`` (a stack spec) cannot be a LoRA GGUF, or None when it can."""
    specs = as_specs(adapters)
    if len(specs) > 1:
        return "a stack of several adapters has no single LoRA GGUF (load each with its own scale instead)"
    ad = inspect_adapter(specs[0].path)
    if any(lm.magnitude_key for lm in ad.lora.values()):
        return "DoRA: llama.cpp's LoRA GGUFs have no magnitude vectors"
    if ad.replaced:
        return f"it replaces {sorted(ad.replaced)[0]} wholesale (modules_to_save or resized embeddings)"
    if ad.config.get("fan_in_fan_out"):  # measured: tests/test_real_tokenizers.py, the gpt2 family
        return "fan_in_fan_out (GPT-2's Conv1D layers): llama.cpp 0.3.36 crashes (SIGSEGV) applying its LoRA GGUF"
    return None


def _factor(ad: Adapter, module: str, weight: float) -> float:
    """What B must be multiplied by for llama.cpp's alpha / rank to give PEFT's scale times the weight."""
    rank = pattern_value(ad.config.get("rank_pattern") or {}, module, ad.config["r"])
    return lora_scaling(ad.config, module) * weight * rank / float(ad.config["lora_alpha"])


def _transformed(ad: Adapter, weight: float, work: Path) -> tuple[Path, dict]:
    """The adapter itself when llama.cpp's scale is already PEFT's, else an exact copy with the scale folded
    into B. Returns (adapter dir for the converter, record of what was done)."""
    factors = {m: _factor(ad, m, weight) for m in ad.lora}
    if all(abs(f - 1.0) < 1e-12 for f in factors.values()):
        return ad.path, {"transformed": False}
    from safetensors.numpy import save_file

    out = work / "adapter"
    out.mkdir()
    b_keys = {lm.b_key: m for m, lm in ad.lora.items()}
    with TensorReader() as r:  # float32 throughout: numpy has no bfloat16, and the converter writes its outtype
        tensors = {
            key: r.float32(info) * np.float32(factors[b_keys[key]] if key in b_keys else 1.0)
            for key, info in ad.tensors.items()
        }
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = dict(ad.config)
    for key in ("use_rslora", "rank_pattern", "alpha_pattern"):
        cfg.pop(key, None)
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    record = {
        "transformed": True,
        "why": [k for k in ("use_rslora", "rank_pattern", "alpha_pattern") if ad.config.get(k)]
        + (["weight"] if weight != 1.0 else []),
        "b_factors": sorted({round(f, 6) for f in factors.values()}),
    }
    log.info("adapter %s: scale folded into B for llama.cpp (%s)", ad.path, record)
    return out, record


def _convert_lora_to(adapter_dir, base_dir, out: Path, outtype: str, weight: float, llama_cpp_dir) -> dict:
    """Run the conversion into ``out`` (the caller publishes it)."""
    if outtype not in OUTTYPES:
        raise PipelineError(f"unsupported LoRA GGUF outtype {outtype!r} (one of {', '.join(OUTTYPES)})")
    why = refusal([{"path": adapter_dir, "weight": weight}])
    if why:
        raise PipelineError(f"{adapter_dir}: no LoRA GGUF: {why}; its merged form still builds")
    ad = inspect_adapter(adapter_dir)
    lc = locate(llama_cpp_dir)
    with tempfile.TemporaryDirectory(prefix="loraforge-lora-") as work:
        src, record = _transformed(ad, weight, Path(work))
        cmd = [
            sys.executable,
            str(lc.script("convert_lora_to_gguf.py")),
            "--base",
            str(Path(base_dir).resolve()),
            "--outfile",
            str(out),
            "--outtype",
            outtype,
            str(src),
        ]
        run_tool(cmd, f"llama.cpp's LoRA converter on {adapter_dir}", out, env=converter_env())
    ranks = sorted({lm.a_shape[0] for lm in ad.lora.values()})
    return {
        "adapter": str(adapter_dir),
        "outtype": outtype.upper(),
        "converter": lc.revision,
        "ranks": ranks,
        "lora_alpha": ad.config["lora_alpha"],
        **record,
    }


def convert_lora(
    adapter_dir, base_dir, out_gguf, outtype: str = "f16", weight: float = 1.0, llama_cpp_dir=None
) -> dict:
    """Convert one PEFT adapter (on the HF base in ``base_dir``) to a LoRA GGUF; refuses what it cannot express
    exactly. The file appears only when complete."""
    with atomic_file(out_gguf) as tmp:
        return _convert_lora_to(adapter_dir, base_dir, tmp, outtype, weight, llama_cpp_dir)


def check_lora(
    base_dir, adapter_dir, base_gguf, lora_gguf, weight: float = 1.0, threads: int = 1, budget_mb=None, reference=None
):
    """llama.cpp with the base's float GGUF and the LoRA GGUF at scale 1 against the adapter applied through PEFT
    (unmerged, float32: the model the adapter defines), on the same tokens of the check text. What differs is the
    rounding of the base to the GGUF's type and of the LoRA to its own, and llama.cpp's arithmetic. Mean
    KL-divergence of the next-token distributions is the measure: top-1 alone flips on near-ties. No merged model
    is involved, so a LoRA-only revision checks its LoRA GGUF the same way. With ``budget_mb`` a base too large
    for it streams layer by layer.

    With ``reference`` (the adapter's evaluation reference: that same PEFT float32 model's log-probs,
    loraforge.evaluation.reference) the check is on its first window and does not run PEFT a second time: at 8B
    that pass is a minute of every revision."""
    from ..checks import check_token_ids, compare_logits, hf_logits
    from ..evaluation.metrics import log_softmax
    from ..llamacpp.library import GGUFModel

    if reference is not None:
        from ..evaluation.reference import reference_window

        ids, ref_lp = reference_window(reference, [{"path": adapter_dir, "weight": weight}])
        plan = None
    else:
        from ..models.peft import peft_model
        from ..preflight import validate_inputs

        ids = check_token_ids(base_dir)  # the base's own tokenizer, with BOS where it adds one
        base, loaded = validate_inputs(base_dir, [{"path": adapter_dir, "weight": weight}])
        model = peft_model(base.path, loaded, merge_all=False, dtype="float32", budget_mb=budget_mb, n_ctx=len(ids))
        ref, plan = hf_logits(model, ids), getattr(model, "memory_plan", None)
        del model  # one model in memory at a time
        ref_lp = log_softmax(ref.astype(np.float64))
    with GGUFModel(Path(base_gguf), n_ctx=max(len(ids), 8), threads=threads, lora=Path(lora_gguf)) as b:
        got = b.logits(ids)
    lq = log_softmax(got[: len(ref_lp)].astype(np.float64))
    lp = ref_lp.astype(np.float64)
    kld = float((np.exp(lp) * (lp - lq)).sum(-1).mean())
    if reference is None:
        res = compare_logits(got, ref)
    else:  # log-probs: logits are defined up to a constant per row
        res = {
            "tokens": len(ids),
            "max_abs_logprob_diff": float(np.abs(lq - lp).max()),
            "top1_agreement": float((lq.argmax(-1) == lp.argmax(-1)).mean()),
            "reference_file": str(reference),
        }
    res.update(mean_kld=kld, tokens=len(ids), reference="the adapter applied through PEFT, unmerged, float32")
    if budget_mb is not None and plan is not None:
        res["memory_plan"] = plan
    return res


def lora_artifact(
    adapter_dir,
    base_dir,
    out_gguf,
    check_json,
    base_gguf,
    outtype: str = "f16",
    weight: float = 1.0,
    max_kld: float = 5e-3,
    threads: int = 1,
    llama_cpp_dir=None,
    budget_mb: float | None = None,
    reference=None,
    hash_cache=None,
) -> dict:
    """The convert_lora rule: convert, check base GGUF + LoRA against the adapter applied through PEFT (or against
    ``reference``, that model's stored log-probs: see check_lora), publish the GGUF and its sidecar (with the inputs'
    content fingerprints: a LoRA-only revision's lineage; ``hash_cache`` is seeded with the GGUF's hash)."""
    from ..checks import write_sidecar
    from ..io.hashing import file_digests, remember_hash
    from ..merging import input_lineage

    with atomic_file(out_gguf) as tmp:
        summary = _convert_lora_to(adapter_dir, base_dir, tmp, outtype, weight, llama_cpp_dir)
        res = check_lora(base_dir, adapter_dir, base_gguf, tmp, weight, threads, budget_mb, reference)
        summary["check"] = res
        res["max_kld"] = max_kld
        if not res["mean_kld"] <= max_kld:
            raise PipelineError(
                f"{out_gguf}: the base GGUF with this LoRA disagrees with the adapter applied through PEFT (mean KLD "
                f"{res['mean_kld']:.3g}, max {max_kld:g}; top-1 agreement {res['top1_agreement']:.3f})"
            )
        sha, fast = file_digests(tmp)
        summary.update(size_bytes=tmp.stat().st_size, sha256=sha)
    remember_hash(out_gguf, sha, hash_cache, fast)
    summary["inputs"] = input_lineage(base_dir, [{"path": adapter_dir, "weight": weight}], hash_cache)
    write_sidecar(check_json, summary)
    log.info("LoRA GGUF %s: %s", out_gguf, summary)
    return summary
