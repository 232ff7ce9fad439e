"""The streaming merge: each merged weight a block of rows at a time, straight from the shards to the output.

It never loads the model: each base tensor's bytes are read with plain reads of byte ranges, every adapter's
delta is added in float32, the block is rounded back to the tensor's own dtype and appended to the output shard;
tensors no adapter touches are copied in the kernel (copy_file_range). numpy only, no torch. Peak memory is one
block of rows plus the adapter factors, whatever the model size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import PipelineError
from ..io.safetensors import (
    TensorInfo,
    TensorReader,
    copy_range,
    decode,
    encode,
    rows_cols,
    tensor_nbytes,
    write_header,
)
from ..preflight import Adapter, AdapterSpec, BaseModel
from ..progress import Progress
from .lora_math import LoraDelta, lora_scaling

BLOCK_ELEMS = 1 << 20  # rows of a merged tensor are processed in blocks of ~4 MiB of float32

Shapes = dict[str, tuple[str, tuple[int, ...]]]  # tensor name -> (safetensors dtype, shape)


class Stopped(PipelineError):
    """The merge was stopped from outside (what ran beside it failed)."""


def _delta(reader: TensorReader, ad: Adapter, module: str, weight: float) -> LoraDelta:
    lm = ad.lora[module]
    mag = reader.float32(ad.tensors[lm.magnitude_key]) if lm.magnitude_key else None
    return LoraDelta(
        reader.float32(ad.tensors[lm.a_key]),
        reader.float32(ad.tensors[lm.b_key]),
        lora_scaling(ad.config, module) * weight,
        transposed=bool(lm.embedding or ad.config.get("fan_in_fan_out")),
        magnitude=mag,
    )


def _merge_tensor(
    reader: TensorReader, out_f, name: str, out_dtype: str, src: TensorInfo, deltas: list[LoraDelta]
) -> None:
    """Write ``src`` (+ deltas) in ``out_dtype``, a block of rows at a time."""
    rows, cols = rows_cols(src.shape)
    step = rows if any(d.needs_whole for d in deltas) else max(1, BLOCK_ELEMS // max(cols, 1))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        w = decode(reader.rows(src, r0, r1), src.dtype)
        for d in deltas:
            w = d.apply(w, r0, r1)
        if not np.isfinite(w).all():
            raise PipelineError(f"merged tensor {name} has non-finite values")
        stored = encode(w, out_dtype)
        if out_dtype in ("BF16", "F16") and not np.isfinite(decode(stored, out_dtype)).all():
            raise PipelineError(f"merged tensor {name} overflows {out_dtype}")
        out_f.write(memoryview(stored).cast("B"))


def merged_shapes(base: BaseModel, loaded: list[tuple[AdapterSpec, Adapter]]) -> Shapes:
    """Name -> (dtype, shape) of every tensor of the merged model, in base order."""
    out = {name: (t.dtype, t.shape) for name, t in base.tensors.items()}
    for _spec, ad in loaded:
        for name, key in ad.replaced.items():
            out[name] = (out[name][0], ad.tensors[key].shape)
    return out


def plan_shards(tensors: Shapes, shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped into consecutive shards of at most ``shard_bytes`` (a larger tensor stands alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, (dtype, shape) in tensors.items():
        n = tensor_nbytes(dtype, shape)
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def shard_name(i: int, n: int) -> str:
    return "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"


def write_index(out: Path, tensors: Shapes, weight_map: dict[str, str]) -> None:
    total = sum(tensor_nbytes(d, s) for d, s in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def streaming_merge(
    base: BaseModel,
    loaded: list[tuple[AdapterSpec, Adapter]],
    out: Path,
    shard_bytes: int,
    on_shard=None,
    stop=None,
) -> dict:
    """Write the merged weights as safetensors shards (+ index) into ``out``; returns counts. ``on_shard``: called
    with each shard's path once it is written and closed. ``stop``: a threading.Event that, once set, ends the merge
    before its next tensor (:class:`Stopped`; the caller discards ``out``)."""
    tensors = merged_shapes(base, loaded)
    touched: dict[str, list] = {}  # base tensor -> the (spec, adapter, module) deltas to add, in order
    for spec, ad in loaded:
        for module in ad.lora:
            touched.setdefault(f"{module}.weight", []).append((spec, ad, module))
        for name in ad.replaced:
            touched.setdefault(name, [])
    shards = plan_shards(tensors, shard_bytes)
    n = len(shards)
    weight_map = {}
    stats = {"tensors_total": len(tensors), "tensors_merged": 0, "tensors_replaced": 0}
    total_bytes = sum(tensor_nbytes(d, s) for d, s in tensors.values())
    # numpy's BLAS on one thread: its products here (a block of rows x rank 16) are small, and a second BLAS thread
    # spins between them, taking a whole core (at 8B: 70 s of CPU for a 42 s merge) from the hashing and the
    # reference that run beside the merge
    with (
        threadpool_limits(limits=1, user_api="blas"),
        TensorReader() as reader,
        Progress("merging", total_bytes, "B") as progress,
    ):
        for i, names in enumerate(shards, 1):
            fname = shard_name(i, n)
            with open(out / fname, "wb", buffering=0) as f:  # unbuffered: copy_file_range appends to it
                write_header(f, names, tensors)
                for name in names:
                    if stop is not None and stop.is_set():
                        raise Stopped(f"merge into {out} stopped before {name}")
                    weight_map[name] = fname
                    info = base.tensors[name]
                    if name not in touched:
                        copy_range(info.file, info.start, info.end, f)
                        progress.update(tensor_nbytes(*tensors[name]))
                        continue
                    # start value: the last adapter replacing it wholesale (modules_to_save, resized embeddings)
                    src = info
                    for _spec, ad in loaded:
                        if name in ad.replaced:
                            src = ad.tensors[ad.replaced[name]]
                    stats["tensors_replaced"] += src is not info
                    stats["tensors_merged"] += bool(touched[name])
                    deltas = [_delta(reader, ad, module, spec.weight) for spec, ad, module in touched[name]]
                    _merge_tensor(reader, f, name, info.dtype, src, deltas)
                    progress.update(tensor_nbytes(*tensors[name]))
            if on_shard is not None:
                on_shard(out / fname)
    if n > 1:
        write_index(out, tensors, weight_map)
    stats["shards"] = n
    stats["tied_embeddings"] = base.tied_embeddings
    return stats
