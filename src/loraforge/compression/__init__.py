"""Compression beyond quantization: fewer decoder layers and narrower MLPs, then distillation from the full model
to heal.

- :mod:`.prune`, depth: each decoder layer's importance is measured on calibration text as the angular distance
  between its input and output hidden states (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper
  Layers"; the 1 - cosine of ShortGPT's Block Influence is the same ranking): a layer that barely turns the residual
  stream matters least. The least important layers are removed.
- :mod:`.prune`, width: each MLP channel's importance is what it adds to the residual stream on the same text, the
  mean magnitude of its activation (Minitron's activation-based importance) times the norm of its column of the
  down projection. Every layer keeps its own most important channels, the same number in each, as Hugging Face
  configs and llama.cpp's converter have one MLP width per model.
- :mod:`.distill`: the pruned student is trained to match the teacher's (the merged model's) next-token
  distribution, KL(teacher || student) on logits over calibration text, seeded, with a progress bar and the loss
  curve saved.

The pruned model is written as a Hugging Face directory that llama.cpp's converter reads like any other. Both run in
float32 (on CPU at the demo's scale); calibration text is never an evaluation text.
"""

from __future__ import annotations

from ..errors import PipelineError


def layers_to_drop(spec: dict, n_layers: int) -> int:
    """How many layers a spec removes (``drop_layers``: a fraction in (0, 1) or a count; 0 without it), checked."""
    d = spec.get("drop_layers")
    if d is None:
        if spec.get("mlp_width") is None:
            raise PipelineError("compression spec without drop_layers or mlp_width: it would remove nothing")
        return 0
    if isinstance(d, float) and not float(d).is_integer():
        if not 0 < d < 1:
            raise PipelineError(f"drop_layers {d}: a fraction must lie in (0, 1)")
        n = round(d * n_layers)
    else:
        n = int(d)
    if n < 1:
        raise PipelineError(f"drop_layers {d} removes no layer of {n_layers}")
    if n >= n_layers:
        raise PipelineError(f"drop_layers {d} removes all {n_layers} layers; at least one must stay")
    return n


def mlp_width(spec: dict, width: int, multiple: int = 1) -> int | None:
    """The MLP width a spec keeps of ``width`` channels (``mlp_width``: a fraction in (0, 1), rounded to the
    nearest ``multiple``, or a number of channels, which must be one), checked; None without it.

    ``multiple`` is the row length the GGUF types need (:func:`loraforge.quantization.row_multiple`): the down
    projection's rows are ``width`` long, and a row of another length would get a fallback type."""
    w = spec.get("mlp_width")
    if w is None:
        return None
    if isinstance(w, float) and not float(w).is_integer():
        if not 0 < w < 1:
            raise PipelineError(f"mlp_width {w}: a fraction must lie in (0, 1)")
        n = max(multiple, int(w * width / multiple + 0.5) * multiple)
    else:
        n = int(w)
        if n % multiple:
            raise PipelineError(
                f"mlp_width {n} is not a multiple of {multiple}, the row length the configured GGUF types need "
                f"(a shorter row would get a fallback type); use {max(multiple, n // multiple * multiple)} or "
                f"{(n // multiple + 1) * multiple}"
            )
    if n < 1:
        raise PipelineError(f"mlp_width {w} keeps no channel of {width}")
    if n >= width:
        raise PipelineError(f"mlp_width {w} keeps all {width} channels or more: it removes nothing")
    return n


def check_spec(spec: dict, config: dict, multiple: int = 1) -> dict:
    """What a spec does to a model with this HF ``config`` ({"drop": layers removed, "width": MLP width kept or
    None}), every value checked, before any weight is read."""
    n_layers = int(config.get("num_hidden_layers") or 0)
    drop = layers_to_drop(spec, n_layers)
    width = None
    if spec.get("mlp_width") is not None:
        inter = config.get("intermediate_size")
        if not isinstance(inter, int):
            raise PipelineError(
                f"mlp_width: the model's config has no single intermediate_size ({inter!r}) to narrow; "
                "width pruning needs a Llama-style MLP"
            )
        width = mlp_width(spec, inter, multiple)
    return {"drop": drop, "width": width}


__all__ = ["check_spec", "layers_to_drop", "mlp_width"]
