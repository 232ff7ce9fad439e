"""An HF causal LM whose weights stay on disk: each decoder layer (and the embedding, the final norm and the head)
is read from the safetensors shards just before it runs and dropped right after, so a forward pass holds one layer's
weights at a time, whatever the model's depth.

It is transformers' own model code on transformers' own modules; only where the weights live changes. Its logits are
the whole model's (tested equal), so the checks and references built on it stay independent of the merge's
arithmetic. PEFT can wrap it (``PeftModel.from_pretrained(..., low_cpu_mem_usage=True)``): the adapter's small
tensors are loaded for good, the base layers it wraps stream like the others.

Weights are read with plain reads (not mmap'd: mapped pages would count as resident memory), straight into the tensor
where it is stored in the compute dtype, else in row blocks cast by torch to the compute dtype (float32 for
references, so a bf16 model is computed and accumulated in float32).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from pathlib import Path

import numpy as np

from ..device import torch_device
from ..errors import PipelineError
from ..io.safetensors import ITEMSIZE, TensorInfo, TensorReader, decode, read_header, rows_cols
from ..progress import Progress
from .hf import load_hf_model

log = logging.getLogger(__name__)

BLOCK_BYTES = 64 << 20  # rows read and cast per block


@functools.cache
def torch_dtype_of(stored: str):
    """The torch dtype of a safetensors float dtype, or None (read through the numpy decoder)."""
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}.get(stored)


def _bytes_of(t):
    """A contiguous CPU tensor's memory as a writable byte buffer."""
    import torch

    return t.view(torch.uint8).numpy()


def checkpoint_index(model_dir) -> dict[str, TensorInfo]:
    """Every tensor of a model directory's safetensors shards, from their headers (read once per version of the
    files: planning a load asks for the index several times)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise PipelineError(f"{model_dir}: no *.safetensors weights")
    stamps = tuple((str(f.absolute()), st.st_mtime_ns, st.st_size) for f in files for st in [f.stat()])
    return dict(_read_index(stamps))


@functools.lru_cache(maxsize=16)
def _read_index(stamps: tuple[tuple[str, int, int], ...]) -> dict[str, TensorInfo]:
    index: dict[str, TensorInfo] = {}
    for path, _, _ in stamps:
        index.update(read_header(path))
    return index


def parameter_bytes(model_dir, itemsize: int = 4) -> int:
    """What the model's weights take in memory at ``itemsize`` bytes per value (4: float32)."""
    return sum(itemsize * math.prod(i.shape) for i in checkpoint_index(model_dir).values())


def largest_unit(model_dir, itemsize: int = 4) -> tuple[str, int]:
    """The streamed unit (a decoder layer, or one tensor outside the layers) that holds the most bytes at a time,
    and those bytes."""
    return max(_unit_bytes(model_dir, itemsize).items(), key=lambda kv: kv[1])


def read_ahead_bytes(model_dir, itemsize: int = 4) -> int:
    """What a pass that reads the next unit while one computes holds at most: its two largest units."""
    return sum(sorted(_unit_bytes(model_dir, itemsize).values())[-2:])


def _unit_bytes(model_dir, itemsize: int) -> dict[str, int]:
    units: dict[str, int] = {}
    for name, info in checkpoint_index(model_dir).items():
        parts = name.split(".")
        # "model.layers.7.mlp.up_proj.weight" -> "model.layers.7"; other tensors are units of their own
        cut = next(
            (i + 2 for i, p in enumerate(parts[:-1]) if p in ("layers", "h", "blocks") and parts[i + 1].isdigit()),
            None,
        )
        unit = ".".join(parts[:cut]) if cut else name
        units[unit] = units.get(unit, 0) + itemsize * math.prod(info.shape)
    return units


def _decoder_layers(model):
    """The ModuleList of decoder layers: the one holding most of the parameters."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not lists:
        raise PipelineError(f"{type(model).__name__}: no list of decoder layers to stream")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


class StreamedWeights:
    """Hooks that give a meta-device model its weights one unit at a time, from the checkpoint."""

    def __init__(self, model, model_dir, dtype, device: str = "cpu", prefetch: bool = True):
        self.dir = Path(model_dir)
        self.index = checkpoint_index(model_dir)
        self.dtype, self.device = dtype, device
        self.reader = TensorReader()
        prefix = getattr(model, "base_model_prefix", "")
        # one Parameter may stand under several names (tied embeddings): the checkpoint holds it under one of them
        names_of: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            names_of.setdefault(id(p), []).append(name)
        key_of: dict[int, str] = {}
        for pid, names in names_of.items():
            for n in names:
                for k in (n, n.removeprefix(prefix + "."), f"{prefix}.{n}"):
                    if k in self.index:
                        key_of[pid] = k
                        break
                if pid in key_of:
                    break
            else:
                raise PipelineError(f"{self.dir}: the checkpoint has no tensor for parameter {names[0]}")
        # per module (by identity, which survives PEFT wrapping it as a base_layer): parameter name -> key
        self.keys: dict[int, dict[str, str]] = {}
        for m in model.modules():
            own = {n: key_of[id(p)] for n, p in m.named_parameters(recurse=False)}
            if own:
                self.keys[id(m)] = own
        self.loaded: dict[int, list] = {}
        layers = _decoder_layers(model)
        in_layers = {id(m) for m in layers.modules()}
        self.units = list(layers) + [m for m in model.modules() if id(m) in self.keys and id(m) not in in_layers]
        self.handles = []
        self.progress: Progress | None = None  # of the pass through the units now running
        # the next unit's weights are read by one background thread while this one computes: a pass then takes
        # about the longer of its reading and its arithmetic, not their sum (two units held at a time)
        self.prefetch = prefetch
        self._pool = None
        self._ahead: tuple[int, object] | None = None  # (id of the unit, the future of its weights)
        self._next_of: dict[int, object] = {id(a): b for a, b in zip(layers, list(layers)[1:], strict=False)}
        self._last = None  # the unit loaded before this one, in this pass
        for u in self.units:
            self.handles.append(u.register_forward_pre_hook(self._load))
            self.handles.append(u.register_forward_hook(self._drop))

    def tensor(self, key: str):
        """One checkpoint tensor in the compute dtype. Stored in that dtype (a bf16 model computed in bf16), its
        bytes are read straight into the tensor; else a block of rows at a time is read into a staging tensor of
        the stored dtype and cast by torch (never the whole stored copy at once)."""
        import torch

        info = self.index[key]
        rows, cols = rows_cols(info.shape)
        stored = torch_dtype_of(info.dtype)
        out = torch.empty((rows, cols), dtype=self.dtype, device=self.device)
        if stored is None:  # not a float dtype torch reads as such: the numpy decoder's float32
            block = decode(self.reader.whole(info), info.dtype).reshape(rows, cols)
            out.copy_(torch.from_numpy(np.ascontiguousarray(block)))
            return out.reshape(info.shape)
        if stored == self.dtype and out.device.type == "cpu":
            self.reader.readinto(info, 0, rows, _bytes_of(out))
            return out.reshape(info.shape)
        step = max(1, BLOCK_BYTES // max(1, cols * ITEMSIZE[info.dtype]))
        staging = torch.empty((min(step, rows), cols), dtype=stored)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            raw = staging[: r1 - r0]
            self.reader.readinto(info, r0, r1, _bytes_of(raw))
            out[r0:r1].copy_(raw)
        return out.reshape(info.shape)

    def _read_unit(self, unit) -> list:
        """(module, parameter name, meta parameter, weights) for every parameter of ``unit`` still on meta."""
        out = []
        for m in unit.modules():
            for pname, key in self.keys.get(id(m), {}).items():
                p = m._parameters.get(pname)
                if p is not None and p.is_meta:
                    if tuple(p.shape) != self.index[key].shape:
                        raise PipelineError(
                            f"{self.dir}: tensor {key} has shape {list(self.index[key].shape)}, the model's "
                            f"parameter {list(p.shape)}"
                        )
                    out.append((m, pname, p, self.tensor(key)))
        return out

    def _take_ahead(self, unit):
        """The weights read ahead for ``unit``, or None; a guess for another unit is waited for and dropped (one
        reader at a time on the shared file descriptors)."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        weights = ahead[1].result()
        return weights if ahead[0] == id(unit) else None

    def _load(self, unit, *_args, **_kwargs):
        import torch

        read = self._take_ahead(unit)
        if read is None:
            read = self._read_unit(unit)
        done = []
        for m, pname, meta, weights in read:
            m._parameters[pname] = torch.nn.Parameter(weights, requires_grad=False)
            done.append((m, pname, meta))
        self.loaded.setdefault(id(unit), []).extend(done)
        if self._last is not None:  # the order this model's forward runs its units in, learnt as it runs
            self._next_of[id(self._last)] = unit
        self._last = unit
        if self.progress is None:  # a forward pass loads every unit once
            self.progress = Progress(f"a pass streaming {self.dir.name}", len(self.units), "units")
        self.progress.update()
        last_of_pass = self.progress.done >= self.progress.total
        if last_of_pass:
            self.progress.close()
            self.progress = None
            self._last = None  # whether another pass follows is not known here: nothing is read ahead of it
        nxt = None if last_of_pass else self._next_of.get(id(unit))
        if self.prefetch and nxt is not None:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraforge-read-ahead")
            self._ahead = (id(nxt), self._pool.submit(self._read_unit, nxt))

    def _drop(self, unit, *_args, **_kwargs):
        for m, pname, meta in self.loaded.pop(id(unit), []):
            m._parameters[pname] = meta  # the meta Parameter again: ties and PEFT's references stay intact

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        if self._ahead is not None:
            self._ahead[1].cancel() or self._ahead[1].exception()
            self._ahead = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.reader.close()

    def __del__(self):
        self.reader.close()


@functools.cache
def _freed_memory_goes_back() -> None:
    """glibc keeps freed blocks under its dynamic mmap threshold (up to 32 MB) in per-thread arenas: a layer's
    weights, read by the read-ahead thread and freed by the compute thread, would stay resident. A fixed 1 MB
    threshold maps every larger block on its own, so freeing a unit returns its memory to the system."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def streamed_model(model_dir, dtype="float32", prefetch: bool = True):
    """A causal LM from a local directory whose weights are read layer by layer during each forward pass.

    ``dtype``: "float32", "auto" (the config's) or a torch dtype. Inference only (no gradients). ``prefetch``:
    read the next unit while one computes (two units held at a time)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    if dtype == "float32":
        dtype = torch.float32
    elif dtype == "auto":
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # tied embeddings: one meta Parameter under both names, as the checkpoint stores it once
    model.eval()
    model.requires_grad_(False)
    device = torch_device()
    for module in model.modules():  # the buffers (rotary frequencies) are real: they go where the compute goes
        for name, buf in module.named_buffers(recurse=False):
            module._buffers[name] = buf.to(device)
    _freed_memory_goes_back()
    model.streamed = StreamedWeights(model, model_dir, dtype, device, prefetch)
    itemsize = torch.finfo(dtype).bits // 8
    unit, held = largest_unit(model_dir, itemsize)
    log.info(
        "%s: streaming %d units (largest %s, %.0f MB in %s) instead of loading %.0f MB",
        model_dir,
        len(model.streamed.units),
        unit,
        held / 1e6,
        str(dtype).removeprefix("torch."),
        parameter_bytes(model_dir, itemsize) / 1e6,
    )
    return model


def _activation_bytes_per_window(model_dir, n_ctx: int) -> int:
    """What one window of ``n_ctx`` tokens costs in a forward pass: logits (float32, with a softmax copy) and the
    hidden states and MLP activations of one layer."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    cfg = getattr(cfg, "text_config", None) or cfg
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 1024)
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    return n_ctx * 4 * (3 * cfg.vocab_size + 16 * hidden + 4 * inter)


def plan_memory(model_dir, itemsize: int, budget_mb: float | None, n_ctx: int = 256) -> dict:
    """Whether the whole model at ``itemsize`` bytes per weight fits ``budget_mb`` with room for its activations;
    if not, it streams, and the batch of windows one pass takes is what the budget leaves."""
    whole = parameter_bytes(model_dir, itemsize)
    per_window = _activation_bytes_per_window(model_dir, n_ctx)
    if budget_mb is None:  # loaded whole: refused in one line where that cannot fit, rather than killed midway
        import psutil

        available = psutil.virtual_memory().available
        if whole + 2 * per_window > available:
            raise PipelineError(
                f"{model_dir}: loading it whole takes {(whole + 2 * per_window) / 1e6:.0f} MB at {itemsize} bytes a "
                f"weight, and {available / 1e6:.0f} MB are available: give a memory budget (memory.budget_mb; "
                "budget_mb= from Python) to stream it layer by layer"
            )
        return {"streamed": False, "weights_bytes": whole, "batch": None}
    budget = budget_mb * 1e6
    if whole + 2 * per_window <= budget:
        return {"streamed": False, "weights_bytes": whole, "batch": None, "budget_mb": budget_mb}
    unit, held = largest_unit(model_dir, itemsize)
    if held + per_window > budget:
        raise PipelineError(
            f"{model_dir}: memory.budget_mb {budget_mb:g} is too small even streamed: its largest unit ({unit}) "
            f"takes {held / 1e6:.0f} MB and one window of {n_ctx} tokens {per_window / 1e6:.0f} MB"
        )
    # reading the next unit while one computes holds two; where the budget has no room for that, one at a time
    ahead = read_ahead_bytes(model_dir, itemsize)
    prefetch = ahead + per_window <= budget
    held = ahead if prefetch else held
    return {
        "streamed": True,
        "weights_bytes": held,
        "batch": max(1, int((budget - held) // per_window)),
        "budget_mb": budget_mb,
        "read_ahead": prefetch,
    }


def plan_for(model_dir, dtype="float32", budget_mb: float | None = None, n_ctx: int = 256) -> dict:
    """:func:`plan_memory` for a model computed in ``dtype`` ("float32" or "auto": as stored)."""
    itemsize = 4 if dtype == "float32" else max(ITEMSIZE.get(i.dtype, 4) for i in checkpoint_index(model_dir).values())
    return plan_memory(model_dir, itemsize, budget_mb, n_ctx)


def inference_model(model_dir, dtype="float32", budget_mb: float | None = None, n_ctx: int = 256):
    """The model for scoring: loaded whole when it fits ``budget_mb`` (MB of RAM for weights and activations),
    streamed layer by layer when it does not. ``model.memory_plan`` says which, and the batch a pass can take."""
    import torch

    plan = plan_for(model_dir, dtype, budget_mb, n_ctx)
    if plan["streamed"]:
        model = streamed_model(model_dir, dtype, plan["read_ahead"])
    else:
        model = load_hf_model(model_dir, dtype=torch.float32 if dtype == "float32" else "auto").eval()
        model.to(torch_device())
    model.memory_plan = plan
    return model
