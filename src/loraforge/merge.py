"""Fold LoRA/DoRA adapters into a base model.

``method="streaming"`` (default) reads each merged weight a block of rows at a time (plain reads of byte ranges,
not mmap, whose touched pages would count as resident memory), adds each adapter's delta computed in float32,
rounds back to the tensor's own dtype and writes output shards as it goes; tensors no adapter touches are
copied in the kernel (copy_file_range). It needs only numpy, not torch. Peak memory is one block of rows plus
the adapter factors, whatever the model size.
``method="peft"`` is PEFT's ``merge_and_unload`` on the whole model, kept as the reference.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_dir
from .errors import PipelineError
from .modelfiles import (
    TOKENIZER_FILES,
    WEIGHT_FILES_RE,
    Adapter,
    BaseModel,
    TensorInfo,
    check_adapter_against_base,
    inspect_adapter,
    inspect_base,
    tokenizer_source,
)

log = logging.getLogger(__name__)

# safetensors dtype -> numpy dtype of its raw storage (bfloat16 is handled as uint16 bits)
ST_NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}
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
    """PEFT's rank_pattern / alpha_pattern rule (peft.utils.other.get_pattern_key): the first key that matches
    the end of the module name at a dot boundary wins."""
    for key in pattern:
        if re.match(rf"(.*\.)?({key})$", module):
            return pattern[key]
    return default


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


BLOCK_ELEMS = 1 << 20  # rows of a merged tensor are processed in blocks of ~4 MiB of float32


def _pread(fd: int, offset: int, n: int, path) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.preadv(fd, [view[got:]], offset + got)
        if not k:
            raise PipelineError(f"{path}: truncated tensor data")
        got += k
    return buf


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    """A tensor seen as 2-D: its first dimension by the rest (1-D and scalars are one row)."""
    if len(shape) > 1:
        return shape[0], math.prod(shape[1:])
    return 1, math.prod(shape)


class _Files:
    """Open file descriptors for reading tensor byte ranges (plain reads, no mmap)."""

    def __init__(self):
        self.fds: dict[Path, int] = {}

    def rows(self, info: TensorInfo, r0: int, r1: int) -> np.ndarray:
        """Rows r0:r1 of a tensor (viewed as 2-D: first dim x the rest), as stored."""
        if info.dtype not in ST_NUMPY:
            raise PipelineError(f"{info.file}: cannot merge into a tensor of dtype {info.dtype}")
        _rows, cols = _rows_cols(info.shape)
        item = ST_ITEMSIZE[info.dtype]
        if info.file not in self.fds:
            self.fds[info.file] = os.open(info.file, os.O_RDONLY)
        buf = _pread(self.fds[info.file], info.start + r0 * cols * item, (r1 - r0) * cols * item, info.file)
        return np.frombuffer(buf, dtype=ST_NUMPY[info.dtype]).reshape(r1 - r0, cols)

    def whole(self, info: TensorInfo) -> np.ndarray:
        return self.rows(info, 0, _rows_cols(info.shape)[0]).reshape(info.shape)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values -> a new float32 array."""
    if dtype == "BF16":
        out = raw.astype(np.uint32)
        out <<= 16
        return out.view(np.float32)
    return raw.astype(np.float32)


def _from_f32(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> storage of ``dtype``, rounding to nearest even (as torch's casts do). Consumes ``x``."""
    if dtype == "BF16":
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        lsb = bits >> 16
        lsb &= 1
        bits += 0x7FFF
        bits += lsb
        bits >>= 16
        return bits.astype(np.uint16)
    return x.astype(ST_NUMPY[dtype])


class _Delta:
    """One adapter's contribution to one weight, applied to any block of the weight's rows.

    PEFT merges W' = W + s*B@A (fan_in_fan_out and embeddings store W transposed: W' = W + s*(B@A).T) and, for
    DoRA, W' = m / ||W + s*B@A||_row * (W + s*B@A) with norms per output feature. Output rows only need the
    matching rows of the small factors, so a block of rows is merged on its own.
    """

    def __init__(self, files: _Files, ad: Adapter, module: str, weight: float):
        lm = ad.lora[module]
        a = _to_f32(files.whole(ad.tensors[lm.a_key]), ad.tensors[lm.a_key].dtype)  # [r, in]
        b = _to_f32(files.whole(ad.tensors[lm.b_key]), ad.tensors[lm.b_key].dtype)  # [out, r]
        b *= np.float32(lora_scaling(ad.config, module) * weight)
        self.transposed = bool(lm.embedding or ad.config.get("fan_in_fan_out"))
        if self.transposed:  # stored W is [in, out]: rows of W are columns of A
            self.left, self.right = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
        else:
            self.left, self.right = b, a
        self.mag = None
        if lm.magnitude_key:
            info = ad.tensors[lm.magnitude_key]
            self.mag = _to_f32(files.whole(info), info.dtype).reshape(-1)
        # DoRA norms run along stored rows unless W is stored transposed: then the whole tensor is needed
        self.needs_whole = self.mag is not None and self.transposed

    def apply(self, w: np.ndarray, r0: int, r1: int) -> np.ndarray:
        w += self.left[r0:r1] @ self.right
        if self.mag is not None:
            if self.transposed:
                w *= (self.mag / np.linalg.norm(w, axis=0))[None, :]
            else:
                w *= (self.mag[r0:r1] / np.linalg.norm(w, axis=1))[:, None]
        return w


def _merge_tensor(files: _Files, out_f, name: str, out_dtype: str, src: TensorInfo, deltas: list[_Delta]) -> None:
    """Write ``src`` (+ deltas) in ``out_dtype``, a block of rows at a time."""
    rows, cols = _rows_cols(src.shape)
    step = rows if any(d.needs_whole for d in deltas) else max(1, BLOCK_ELEMS // max(cols, 1))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        w = _to_f32(files.rows(src, r0, r1), src.dtype)
        for d in deltas:
            w = d.apply(w, r0, r1)
        if not np.isfinite(w).all():
            raise PipelineError(f"merged tensor {name} has non-finite values")
        stored = _from_f32(w, out_dtype)
        if out_dtype in ("BF16", "F16") and not np.isfinite(_to_f32(stored, out_dtype)).all():
            raise PipelineError(f"merged tensor {name} overflows {out_dtype}")
        out_f.write(memoryview(stored).cast("B"))


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
    """Append bytes start:end of ``src`` to the unbuffered file ``dst``, in the kernel where it can."""
    with open(src, "rb", buffering=0) as s:
        left, offset = end - start, start
        try:
            while left:
                k = os.copy_file_range(s.fileno(), dst.fileno(), min(left, 1 << 30), offset)
                if not k:
                    raise PipelineError(f"{src}: truncated tensor data")
                left, offset = left - k, offset + k
        except OSError:  # no copy_file_range between these files: plain reads, same bytes
            s.seek(offset)
            while left:
                chunk = s.read(min(left, 8 << 20))
                if not chunk:
                    raise PipelineError(f"{src}: truncated tensor data") from None
                dst.write(chunk)
                left -= len(chunk)


def _streaming(base: BaseModel, loaded, out: Path, shard_bytes: int) -> dict:
    tensors = _out_tensors(base, loaded)
    touched: dict[str, list] = {}  # base tensor -> the (spec, adapter, module) deltas to add, in order
    for spec, ad in loaded:
        for module in ad.lora:
            touched.setdefault(f"{module}.weight", []).append((spec, ad, module))
        for name in ad.replaced:
            touched.setdefault(name, [])
    shards = _plan_shards(tensors, shard_bytes)
    n = len(shards)
    weight_map = {}
    stats = {"tensors_total": len(tensors), "tensors_merged": 0, "tensors_replaced": 0}
    files = _Files()
    try:
        for i, names in enumerate(shards, 1):
            fname = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
            with open(out / fname, "wb", buffering=0) as f:  # unbuffered: copy_file_range appends to it
                _write_header(f, names, tensors)
                for name in names:
                    weight_map[name] = fname
                    info = base.tensors[name]
                    if name not in touched:
                        _copy_range(info.file, info.start, info.end, f)
                        continue
                    # start value: the last adapter replacing it wholesale (modules_to_save, resized embeddings)
                    src = info
                    for _spec, ad in loaded:
                        if name in ad.replaced:
                            src = ad.tensors[ad.replaced[name]]
                    stats["tensors_replaced"] += src is not info
                    stats["tensors_merged"] += bool(touched[name])
                    deltas = [_Delta(files, ad, module, spec.weight) for spec, ad, module in touched[name]]
                    _merge_tensor(files, f, name, info.dtype, src, deltas)
    finally:
        files.close()
    if n > 1:
        index = {"metadata": {"total_size": sum(ST_ITEMSIZE[d] * math.prod(s) for d, s in tensors.values())},
                 "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    stats["shards"] = n
    stats["tied_embeddings"] = base.tied_embeddings
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


def _publish(base_dir, adapters, out_dir, method: str, shard_size_mb: int, check: dict | None) -> dict:
    """Validate, merge into a temporary dir, optionally check it, then rename it to ``out_dir``."""
    base, loaded = validate_inputs(base_dir, adapters)
    out_dir = Path(out_dir)
    _check_out_dir(base, out_dir)
    with atomic_dir(out_dir) as tmp:
        summary = _merge_into(base, loaded, tmp, method, shard_size_mb)
        if check is not None:
            summary["check"] = _check_merged(base, loaded, tmp, **check)
            log.info("merge check passed: %s", summary["check"])
    log.info("merged %d adapter(s) into %s: %s", len(loaded), out_dir, summary)
    return summary


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
    return _publish(base_dir, adapters, out_dir, method, shard_size_mb, check=None)


# logits of merged vs. adapter-applied model may differ by rounding of the merged weights to the dtype
DEFAULT_MERGE_TOLERANCE = {"F32": 1e-3, "F16": 0.1, "BF16": 0.5}


def _check_merged(base: BaseModel, loaded, merged_dir, text_file: str | None = None,
                  tolerance: dict | None = None) -> dict:
    """Logits of the merged model vs. PEFT with the adapter applied unmerged, on a fixed text."""
    from transformers import AutoModelForCausalLM

    from .checks import check_token_ids, compare_logits, hf_logits

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

    if not check:
        log.warning("merge check disabled in config: merged logits will not be compared with PEFT")
    checking = {"text_file": check_text, "tolerance": tolerance} if check else None
    summary = _publish(base_dir, adapters, out_dir, method, shard_size_mb, check=checking)
    write_sidecar(check_json, summary)
    return summary
