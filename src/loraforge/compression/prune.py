"""Structured pruning: remove the decoder layers whose output differs least (in angle) from their input, and the
MLP channels that add least to the residual stream."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from ..checks import write_sidecar
from ..errors import PipelineError
from ..io.publish import atomic_dir
from ..preflight import inspect_base
from . import check_spec

log = logging.getLogger(__name__)

# what a pruned model directory keeps from its source besides weights and config
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
)


def _decoder_layers(model):
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise PipelineError(f"{type(model).__name__}: no model.layers decoder stack to prune")
    return layers


def _gated_mlp(layer):
    """A decoder layer's MLP and its layout: "split" (gate_proj, up_proj; Llama, Mistral, Qwen) or "fused"
    (gate_up_proj, gate rows first; Phi-3), then down_proj. Other MLPs cannot be narrowed here."""
    import torch

    mlp = getattr(layer, "mlp", None)
    lin = {n: getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "gate_up_proj", "down_proj")}
    if isinstance(lin["down_proj"], torch.nn.Linear):
        if isinstance(lin["gate_proj"], torch.nn.Linear) and isinstance(lin["up_proj"], torch.nn.Linear):
            return mlp, "split"
        if isinstance(lin["gate_up_proj"], torch.nn.Linear):
            return mlp, "fused"
    raise PipelineError(
        f"{type(layer).__name__}: mlp_width needs a gated MLP (gate_proj and up_proj, or gate_up_proj, then "
        f"down_proj); this model's is {type(mlp).__name__}"
    )


def importance(model, windows: np.ndarray, channels: bool = False, batch: int = 4):
    """Measured on every token of ``windows``: each decoder layer's mean angular distance (radians / pi, in [0, 1])
    between its input and output hidden states, and with ``channels`` each MLP channel's mean contribution to the
    residual stream (mean |activation| times the norm of its down-projection column), one array per layer."""
    import torch

    layers = _decoder_layers(model)
    sums, count = np.zeros(len(layers)), 0
    captured: dict[int, float] = {}
    mags = [None] * len(layers)

    def layer_hook(i):
        def fn(_module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).clamp(-1, 1)
            captured[i] = float((torch.arccos(cos) / torch.pi).sum())

        return fn

    def channel_hook(i):
        def fn(_module, args):
            m = args[0].detach().float().abs().sum(dim=tuple(range(args[0].dim() - 1))).double()
            mags[i] = m if mags[i] is None else mags[i] + m

        return fn

    handles = [layer.register_forward_hook(layer_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    if channels:
        downs = [_gated_mlp(layer)[0].down_proj for layer in layers]
        handles += [d.register_forward_pre_hook(channel_hook(i)) for i, d in enumerate(downs)]
    try:
        with torch.no_grad():
            for s in range(0, len(windows), batch):
                x = torch.from_numpy(windows[s : s + batch].astype(np.int64))
                model(x)
                sums += [captured[i] for i in range(len(layers))]
                count += x.numel()
    finally:
        for h in handles:
            h.remove()
    if not channels:
        return (sums / count).tolist(), None
    with torch.no_grad():
        col_norms = [d.weight.float().norm(dim=0).double() for d in downs]
    return (sums / count).tolist(), [(m / count * n).numpy() for m, n in zip(mags, col_norms, strict=True)]


def _take(linear, index, dim: int):
    """``linear`` keeping only the output rows (dim 0) or input columns (dim 1) in ``index``, in place."""
    import torch

    linear.weight = torch.nn.Parameter(linear.weight.data.index_select(dim, index).clone(), requires_grad=False)
    if dim == 0:
        linear.out_features = len(index)
        if linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias.data[index].clone(), requires_grad=False)
    else:
        linear.in_features = len(index)


def narrow_mlps(model, width: int, scores: list[np.ndarray]) -> list[list[int]]:
    """Each decoder layer's MLP keeping its ``width`` highest-scoring channels (in place; ties keep the lower
    index), the config's intermediate_size with it. Returns the channels kept per layer."""
    import torch

    kept = []
    for layer, score in zip(_decoder_layers(model), scores, strict=True):
        mlp, kind = _gated_mlp(layer)
        keep = np.sort(np.argsort(-np.asarray(score), kind="stable")[:width])
        idx = torch.from_numpy(keep)
        if kind == "split":
            _take(mlp.gate_proj, idx, 0)
            _take(mlp.up_proj, idx, 0)
        else:  # Phi-3: gate rows, then up rows
            _take(mlp.gate_up_proj, torch.cat([idx, idx + mlp.gate_up_proj.out_features // 2]), 0)
        _take(mlp.down_proj, idx, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
        kept.append(keep.tolist())
    model.config.intermediate_size = width
    return kept


def drop_layers(model, drop: list[int]):
    """The model without the layers in ``drop`` (in place), its config and per-layer indices renumbered."""
    import torch

    layers = _decoder_layers(model)
    keep = [i for i in range(len(layers)) if i not in set(drop)]
    model.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new, layer in enumerate(model.model.layers):
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new  # the KV cache is indexed by it
    cfg = model.config
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    cfg.num_hidden_layers = len(keep)
    return model


def prune(
    teacher_dir,
    text,
    out_dir,
    sidecar,
    spec: dict,
    n_ctx: int = 256,
    max_tokens: int = 4096,
    threads: int = 1,
    row_multiple: int = 1,
) -> dict:
    """Measure the importance of the layers (and with ``spec["mlp_width"]`` of the MLP channels) of the model in
    ``teacher_dir`` on ``text``; remove the least important layers (``spec["drop_layers"]``) and narrow every MLP
    to its most important channels; write the pruned model (source dtype) to ``out_dir`` and the scores to
    ``sidecar``. A width given as a fraction is rounded to a multiple of ``row_multiple`` (the GGUF types')."""
    import torch

    from ..evaluation.windows import token_windows
    from ..models.hf import load_hf_model

    src = inspect_base(teacher_dir, what="model")
    plan = check_spec(spec, src.config, row_multiple)
    n_layers, width = int(src.config.get("num_hidden_layers", 0)), plan["width"]
    windows = token_windows(teacher_dir, text, n_ctx, max_tokens)
    model = load_hf_model(teacher_dir, dtype=torch.float32).eval()
    scores, channels = importance(model, windows, channels=bool(width))  # an MLP it cannot narrow: refused first
    drop = sorted(int(i) for i in np.argsort(scores, kind="stable")[: plan["drop"]])
    log.info("layer importance (angular distance): %s; dropping %s", [round(s, 4) for s in scores], drop)
    del model
    model = load_hf_model(teacher_dir, dtype="auto")
    summary = {
        "teacher": str(teacher_dir),
        "spec": spec,
        "text": str(text),
        "tokens": int(windows.size),
        "importance": scores,
        "dropped": drop,
        "layers": [n_layers, n_layers - len(drop)],
    }
    if width:
        inter = int(src.config["intermediate_size"])
        kept = narrow_mlps(model, width, channels)  # before dropping: the scores are indexed by the full stack
        # per kept layer: the share of its measured channel importance the kept channels carry
        share = [float(c[k].sum() / c.sum()) if c.sum() > 0 else 1.0 for c, k in zip(channels, kept, strict=True)]
        summary["mlp_width"] = [inter, width]
        summary["channel_importance_kept"] = [round(v, 6) for i, v in enumerate(share) if i not in drop]
        log.info("MLP width %d -> %d; importance kept per layer: %s", inter, width, [round(v, 3) for v in share])
    drop_layers(model, drop)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        for name in SIDE_FILES:
            if (Path(teacher_dir) / name).exists() and not (tmp / name).exists():
                shutil.copy2(Path(teacher_dir) / name, tmp / name)
    write_sidecar(sidecar, summary)
    done = {k: summary[k] for k in ("dropped", "layers", "mlp_width") if k in summary}
    log.info("pruned %s -> %s: %s", teacher_dir, out_dir, json.dumps(done))
    return summary
