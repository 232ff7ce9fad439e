"""An HF causal LM whose weights stay on disk: each decoder layer (and the embedding, the final norm and the head)
is read from the safetensors shards just before it runs and dropped right after, so a forward pass holds one layer's
weights at a time, whatever the model's depth.

It is transformers' own model code on transformers' own modules; only where the weights live changes. Its logits are
the whole model's (tested equal), so the checks and references built on it stay independent of the merge's
arithmetic. PEFT can wrap it (``PeftModel.from_pretrained(..., low_cpu_mem_usage=True)``): the adapter's small
tensors are loaded for good, the base layers it wraps stream like the others.

Weights are read with plain reads in row blocks straight into a tensor of the compute dtype (float32 for references,
so a bf16 model is computed and accumulated in float32), not mmap'd: mapped pages would count as resident memory.
"""

from __future__ import annotations

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
    return max(units.items(), key=lambda kv: kv[1])


def _decoder_layers(model):
    """The ModuleList of decoder layers: the one holding most of the parameters."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not lists:
        raise PipelineError(f"{type(model).__name__}: no list of decoder layers to stream")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


class StreamedWeights:
    """Hooks that give a meta-device model its weights one unit at a time, from the checkpoint."""

    def __init__(self, model, model_dir, dtype, device: str = "cpu"):
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
        for u in self.units:
            self.handles.append(u.register_forward_pre_hook(self._load))
            self.handles.append(u.register_forward_hook(self._drop))

    def tensor(self, key: str):
        """One checkpoint tensor in the compute dtype, read in row blocks (never the whole stored copy at once)."""
        import torch

        info = self.index[key]
        rows, cols = rows_cols(info.shape)
        out = torch.empty((rows, cols), dtype=self.dtype, device=self.device)
        step = max(1, BLOCK_BYTES // max(1, cols * ITEMSIZE.get(info.dtype, 4)))
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            block = decode(self.reader.rows(info, r0, r1), info.dtype)
            out[r0:r1] = torch.from_numpy(np.ascontiguousarray(block))
        return out.reshape(info.shape)

    def _load(self, unit, *_args, **_kwargs):
        import torch

        done = []
        for m in unit.modules():
            for pname, key in self.keys.get(id(m), {}).items():
                p = m._parameters.get(pname)
                if p is not None and p.is_meta:
                    if tuple(p.shape) != self.index[key].shape:
                        raise PipelineError(
                            f"{self.dir}: tensor {key} has shape {list(self.index[key].shape)}, the model's "
                            f"parameter {list(p.shape)}"
                        )
                    m._parameters[pname] = torch.nn.Parameter(self.tensor(key), requires_grad=False)
                    done.append((m, pname, p))
        self.loaded.setdefault(id(unit), []).extend(done)
        if self.progress is None:  # a forward pass loads every unit once
            self.progress = Progress(f"a pass streaming {self.dir.name}", len(self.units), "units")
        self.progress.update()
        if self.progress.done >= self.progress.total:
            self.progress.close()
            self.progress = None

    def _drop(self, unit, *_args, **_kwargs):
        for m, pname, meta in self.loaded.pop(id(unit), []):
            m._parameters[pname] = meta  # the meta Parameter again: ties and PEFT's references stay intact

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.reader.close()

    def __del__(self):
        self.reader.close()


def streamed_model(model_dir, dtype="float32"):
    """A causal LM from a local directory whose weights are read layer by layer during each forward pass.

    ``dtype``: "float32", "auto" (the config's) or a torch dtype. Inference only (no gradients)."""
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
    model.streamed = StreamedWeights(model, model_dir, dtype, device)
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
    if budget_mb is None:
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
    return {
        "streamed": True,
        "weights_bytes": held,
        "batch": max(1, int((budget - held) // per_window)),
        "budget_mb": budget_mb,
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
        model = streamed_model(model_dir, dtype)
    else:
        model = load_hf_model(model_dir, dtype=torch.float32 if dtype == "float32" else "auto").eval()
        model.to(torch_device())
    model.memory_plan = plan
    return model
