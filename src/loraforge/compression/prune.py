"""Depth pruning: remove the decoder layers whose output differs least (in angle) from their input."""

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
from . import layers_to_drop

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


def layer_importance(model, windows: np.ndarray, batch: int = 4) -> list[float]:
    """Mean angular distance (radians / pi, in [0, 1]) between each decoder layer's input and output hidden
    states over every token of ``windows``."""
    import torch

    layers = _decoder_layers(model)
    sums, count = np.zeros(len(layers)), 0
    captured: dict[int, float] = {}

    def hook(i):
        def fn(_module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).clamp(-1, 1)
            captured[i] = float((torch.arccos(cos) / torch.pi).sum())

        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
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
    return (sums / count).tolist()


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
    teacher_dir, text, out_dir, sidecar, spec: dict, n_ctx: int = 256, max_tokens: int = 4096, threads: int = 1
) -> dict:
    """Measure layer importance of the model in ``teacher_dir`` on ``text``, remove the least important layers
    (``spec["drop_layers"]``), write the pruned model (source dtype) to ``out_dir`` and the scores to ``sidecar``."""
    import torch

    from ..evaluation.windows import token_windows
    from ..merging.peft_reference import load_hf_model

    src = inspect_base(teacher_dir, what="model")
    n_layers = int(src.config.get("num_hidden_layers", 0))
    n_drop = layers_to_drop(spec, n_layers)
    windows = token_windows(teacher_dir, text, n_ctx, max_tokens)
    model = load_hf_model(teacher_dir, dtype=torch.float32).eval()
    scores = layer_importance(model, windows)
    drop = sorted(int(i) for i in np.argsort(scores, kind="stable")[:n_drop])
    log.info("layer importance (angular distance): %s; dropping %s", [round(s, 4) for s in scores], drop)
    del model
    model = load_hf_model(teacher_dir, dtype="auto")
    drop_layers(model, drop)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        for name in SIDE_FILES:
            if (Path(teacher_dir) / name).exists() and not (tmp / name).exists():
                shutil.copy2(Path(teacher_dir) / name, tmp / name)
    summary = {
        "teacher": str(teacher_dir),
        "spec": spec,
        "text": str(text),
        "tokens": int(windows.size),
        "importance": scores,
        "dropped": drop,
        "layers": [n_layers, n_layers - len(drop)],
    }
    write_sidecar(sidecar, summary)
    log.info("pruned %s -> %s: %s", teacher_dir, out_dir, json.dumps({k: summary[k] for k in ("dropped", "layers")}))
    return summary
