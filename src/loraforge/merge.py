"""Fold LoRA/DoRA adapters into a base model.

``method="streaming"`` (default) reads base tensors one at a time from memory-mapped safetensors, adds each
adapter's delta computed in float32, casts back to the tensor's own dtype and writes output shards as it goes;
tensors no adapter touches are copied byte for byte. Peak memory is the largest tensor plus a constant.
``method="peft"`` is PEFT's ``merge_and_unload`` on the whole model, kept as the reference.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .atomic import atomic_dir
from .errors import PipelineError
from .modelfiles import (
    TOKENIZER_FILES,
    WEIGHT_FILES_RE,
    Adapter,
    BaseModel,
    check_adapter_against_base,
    inspect_adapter,
    inspect_base,
    tokenizer_source,
)

log = logging.getLogger(__name__)

ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_TO_ST = {v: k for k, v in ST_DTYPES.items()}
ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter of a merge, applied in list order with ``weight`` multiplying its delta."""

    path: Path
    weight: float = 1.0


def _as_specs(adapters) -> list[AdapterSpec]:
    specs = []
    for a in adapters if isinstance(adapters, list | tuple) else [adapters]:
        if isinstance(a, AdapterSpec):
            specs.append(a)
        elif isinstance(a, dict):
            specs.append(AdapterSpec(Path(a["path"]), float(a.get("weight", 1.0))))
        else:
            specs.append(AdapterSpec(Path(a)))
    if not specs:
        raise PipelineError("no adapter given to merge")
    return specs


def _pattern_value(pattern: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup (regex match on the module name suffix)."""
    try:
        from peft.utils.other import get_pattern_key
    except ImportError:  # older PEFT keeps the same rule here
        from peft.tuners.tuners_utils import get_pattern_key  # type: ignore
    if not pattern:
        return default
    key = get_pattern_key(pattern.keys(), module)
    return pattern.get(key, default)


def lora_scaling(cfg: dict, module: str) -> float:
    r = _pattern_value(cfg.get("rank_pattern") or {}, module, cfg["r"])
    alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg["lora_alpha"])
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def validate_inputs(base_dir, adapters) -> tuple[BaseModel, list[tuple[AdapterSpec, Adapter]]]:
    """All checks that need no weights: raises PipelineError with one line on the first problem."""
    base = inspect_base(base_dir)
    loaded = []
    for spec in _as_specs(adapters):
        ad = inspect_adapter(spec.path)
        check_adapter_against_base(ad, base)
        loaded.append((spec, ad))
    return base, loaded


# ---------------------------------------------------------------- streaming merge


def _tensor(reader_handles: dict, path: Path, key: str) -> torch.Tensor:
    if path not in reader_handles:
        reader_handles[path] = safe_open(str(path), framework="pt")
    return reader_handles[path].get_tensor(key)


def _delta(handles, ad: Adapter, module: str, weight: float) -> torch.Tensor:
    lm = ad.lora[module]
    a = _tensor(handles, ad.weights_file, lm.a_key).float()
    b = _tensor(handles, ad.weights_file, lm.b_key).float()
    d = (b @ a) * (lora_scaling(ad.config, module) * weight)
    if lm.embedding or ad.config.get("fan_in_fan_out"):
        d = d.T
    return d


def _apply_adapter(handles, ad: Adapter, module: str, w: torch.Tensor, weight: float) -> torch.Tensor:
    """w (float32) -> w with this adapter's delta, exactly as PEFT's LoraLayer.merge does it."""
    lm = ad.lora[module]
    d = _delta(handles, ad, module, weight)
    if not lm.magnitude_key:
        return w + d
    fifo = bool(ad.config.get("fan_in_fan_out"))
    mag = _tensor(handles, ad.weights_file, lm.magnitude_key).float()
    combined = w + d
    rows = combined.T if fifo else combined  # DoRA norms are per output feature
    norm = torch.linalg.norm(rows, dim=1)
    factor = (mag / norm).view(-1, 1)
    return (factor * rows).T if fifo else factor * rows


def _out_tensors(base: BaseModel, loaded) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every tensor of the merged model, in base order."""
    out = {name: (t.dtype, t.shape) for name, t in base.tensors.items()}
    for _spec, ad in loaded:
        for name, key in ad.replaced.items():
            out[name] = (out[name][0], ad.tensors[key].shape)
    return out


def _plan_shards(tensors: dict[str, tuple[str, tuple[int, ...]]], shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, (dtype, shape) in tensors.items():
        n = ST_ITEMSIZE[dtype] * math.prod(shape)
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def _write_header(f, names, tensors) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        dtype, shape = tensors[name]
        n = ST_ITEMSIZE[dtype] * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)


def _copy_range(src: Path, start: int, end: int, dst) -> None:
    with open(src, "rb") as s:
        s.seek(start)
        left = end - start
        while left:
            chunk = s.read(min(left, 64 << 20))
            if not chunk:
                raise PipelineError(f"{src}: truncated tensor data")
            dst.write(chunk)
            left -= len(chunk)


def _write_tensor(f, t: torch.Tensor) -> None:
    t = t.contiguous().view(-1)
    f.write(t.view(torch.uint8).numpy().data if t.numel() else b"")


def _streaming(base: BaseModel, loaded, out: Path, shard_bytes: int) -> dict:
    handles: dict = {}
    tensors = _out_tensors(base, loaded)
    # which adapters touch which tensor
    touched: dict[str, list] = {}
    for spec, ad in loaded:
        for module in ad.lora:
            touched.setdefault(f"{module}.weight", []).append((spec, ad, module))
        for name in ad.replaced:
            touched.setdefault(name, [])
    tied_name = None
    if base.tied_embeddings:
        tied_name = next((k for k in tensors if k.endswith("embed_tokens.weight")), None)
    shards = _plan_shards(tensors, shard_bytes)
    n = len(shards)
    weight_map = {}
    stats = {"tensors_total": len(tensors), "tensors_merged": 0, "tensors_replaced": 0}
    for i, names in enumerate(shards, 1):
        fname = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
        with open(out / fname, "wb") as f:
            _write_header(f, names, tensors)
            for name in names:
                weight_map[name] = fname
                info = base.tensors[name]
                if name not in touched:
                    _copy_range(info.file, info.start, info.end, f)
                    continue
                # base value: the last adapter that replaces it wholesale (modules_to_save, resized embeddings)
                src = info
                w = None
                for _spec, ad in loaded:
                    if name in ad.replaced:
                        w = _tensor(handles, ad.weights_file, ad.replaced[name])
                        stats["tensors_replaced"] += 1
                if w is None:
                    w = _tensor(handles, src.file, name)
                dtype = ST_DTYPES[info.dtype]
                work = w.float()
                for spec, ad, module in touched[name]:
                    work = _apply_adapter(handles, ad, module, work, spec.weight)
                if touched[name]:
                    stats["tensors_merged"] += 1
                if dtype.is_floating_point and dtype != torch.float32:
                    finfo = torch.finfo(dtype)
                    if not torch.isfinite(work).all() or work.abs().max() > finfo.max:
                        raise PipelineError(f"merged tensor {name} overflows {dtype}")
                _write_tensor(f, work.to(dtype))
    if n > 1:
        index = {"metadata": {"total_size": sum(ST_ITEMSIZE[d] * math.prod(s) for d, s in tensors.values())},
                 "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    stats["shards"] = n
    stats["tied_embeddings"] = bool(tied_name)
    return stats


# ---------------------------------------------------------------- PEFT merge (reference)


def load_base_model(base_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto", local_files_only=True)


def peft_model(base_dir: Path, loaded, merge_all: bool):
    """Base with the adapters applied in order through PEFT. The last one stays unmerged unless merge_all."""
    from peft import PeftModel

    model = load_base_model(base_dir)
    for i, (spec, ad) in enumerate(loaded):
        vocab = ad.tensors.get(next((k for n, k in ad.replaced.items() if n.endswith("embed_tokens.weight")), ""), None)
        if vocab is not None and vocab.shape[0] != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(vocab.shape[0])
        model = PeftModel.from_pretrained(model, str(ad.path), local_files_only=True)
        if spec.weight != 1.0:
            from peft.tuners.lora import LoraLayer

            for m in model.modules():
                if isinstance(m, LoraLayer):
                    m.scale_layer(spec.weight)
        if merge_all or i < len(loaded) - 1:
            model = model.merge_and_unload()
    model.eval()
    return model


def _peft(base: BaseModel, loaded, out: Path, shard_bytes: int) -> dict:
    model = peft_model(base.path, loaded, merge_all=True)
    model.save_pretrained(str(out), max_shard_size=shard_bytes)
    return {"tensors_total": len(model.state_dict())}


# ---------------------------------------------------------------- public entry point


def _copy_side_files(base: BaseModel, loaded, out: Path) -> Path:
    tok_src = tokenizer_source(base, [ad for _s, ad in loaded])
    for f in sorted(base.path.iterdir()):
        if f.is_file() and not WEIGHT_FILES_RE.search(f.name) and f.name != "config.json":
            if tok_src != base.path and f.name in TOKENIZER_FILES:
                continue
            shutil.copy2(f, out / f.name)
    if tok_src != base.path:
        for name in TOKENIZER_FILES:
            if (tok_src / name).exists():
                shutil.copy2(tok_src / name, out / name)
    return tok_src


def _write_config(base: BaseModel, loaded, out: Path) -> None:
    cfg = dict(base.config)
    for _spec, ad in loaded:
        for name, key in ad.replaced.items():
            if name.endswith("embed_tokens.weight"):
                cfg["vocab_size"] = ad.tensors[key].shape[0]
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _merge_into(base: BaseModel, loaded, out: Path, method: str, shard_size_mb: int) -> dict:
    shard_bytes = int(shard_size_mb) * 1024 * 1024
    if method == "streaming":
        stats = _streaming(base, loaded, out, shard_bytes)
        _write_config(base, loaded, out)
    elif method == "peft":
        stats = _peft(base, loaded, out, shard_bytes)
    else:
        raise PipelineError(f"unknown merge method {method!r} (streaming or peft)")
    tok_src = _copy_side_files(base, loaded, out)
    return {
        "method": method,
        "base_dtype": base.dtype,
        "tokenizer_from": str(tok_src),
        "adapters": [{"path": str(s.path), "weight": s.weight} for s, _ in loaded],
        **stats,
    }


def _check_out_dir(base: BaseModel, out_dir: Path) -> None:
    out = out_dir.resolve()
    if out == base.path.resolve() or base.path.resolve() in out.parents:
        raise PipelineError(f"{out_dir}: output must not be inside the base model directory")


def merge(
    base_dir: str | os.PathLike,
    adapters,
    out_dir: str | os.PathLike,
    method: str = "streaming",
    shard_size_mb: int = 4096,
) -> dict:
    """Merge ``adapters`` (paths, dicts with path/weight, or AdapterSpec) into ``base_dir``; write ``out_dir``.

    Returns a summary dict. ``out_dir`` appears only when complete. ``base_dir`` is only read.
    """
    base, loaded = validate_inputs(base_dir, adapters)
    out_dir = Path(out_dir)
    _check_out_dir(base, out_dir)
    with atomic_dir(out_dir) as tmp:
        summary = _merge_into(base, loaded, tmp, method, shard_size_mb)
    log.info("merged %d adapter(s) into %s: %s", len(loaded), out_dir, summary)
    return summary


# logits of merged vs. adapter-applied model may differ by rounding of the merged weights to the dtype
DEFAULT_MERGE_TOLERANCE = {"F32": 1e-3, "F16": 0.1, "BF16": 0.5}


def check_merge(base_dir, adapters, merged_dir, text_file: str | None = None,
                tolerance: dict | None = None) -> dict:
    """Logits of the merged model vs. PEFT with the adapter applied unmerged, on a fixed text."""
    from transformers import AutoModelForCausalLM

    from .checks import check_token_ids, compare_logits, hf_logits

    base, loaded = validate_inputs(base_dir, adapters)
    ids = check_token_ids(merged_dir, text_file)
    ref = hf_logits(peft_model(base.path, loaded, merge_all=False), ids)
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype="auto", local_files_only=True)
    res = compare_logits(hf_logits(merged, ids), ref)
    tol = float({**DEFAULT_MERGE_TOLERANCE, **(tolerance or {})}[base.dtype])
    res.update(dtype=base.dtype, tolerance=tol, reference="peft adapter applied, unmerged")
    if not res["max_abs_logit_diff"] <= tol:
        raise PipelineError(
            f"{merged_dir}: merged model logits differ from the adapter-applied model by "
            f"{res['max_abs_logit_diff']:.4g} > tolerance {tol:g} for {base.dtype}"
        )
    return res


def merge_artifact(base_dir, adapters, out_dir, check_json, method: str = "streaming",
                   shard_size_mb: int = 4096, check: bool = True, check_text: str | None = None,
                   tolerance: dict | None = None) -> dict:
    """The merge_adapter rule: merge, check against PEFT, then publish the dir and its JSON sidecar."""
    from .checks import write_sidecar

    base, loaded = validate_inputs(base_dir, adapters)
    out_dir = Path(out_dir)
    _check_out_dir(base, out_dir)
    with atomic_dir(out_dir) as tmp:
        summary = _merge_into(base, loaded, tmp, method, shard_size_mb)
        if check:
            summary["check"] = check_merge(base_dir, adapters, tmp, check_text, tolerance)
            log.info("merge check passed: %s", summary["check"])
        else:
            log.warning("merge check disabled in config: merged logits were not compared with PEFT")
    write_sidecar(check_json, summary)
    return summary
