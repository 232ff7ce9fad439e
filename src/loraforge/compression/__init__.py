"""Compression beyond quantization: fewer decoder layers, then distillation from the full model to heal.

- :mod:`.prune`: each decoder layer's importance is measured on calibration text as the angular distance between
  its input and output hidden states (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers"; the
  1 - cosine of ShortGPT's Block Influence is the same ranking): a layer that barely turns the residual stream
  matters least. The least important layers are removed, and the model is written as a Hugging Face directory
  that llama.cpp's converter reads like any other.
- :mod:`.distill`: the pruned student is trained to match the teacher's (the merged model's) next-token
  distribution, KL(teacher || student) on logits over calibration text, seeded, with a progress bar and the loss
  curve saved.

Both run in float32 on CPU at the demo's scale; calibration text is never an evaluation text.
"""

from __future__ import annotations

from ..errors import PipelineError


def layers_to_drop(spec: dict, n_layers: int) -> int:
    """How many layers a spec removes (``drop_layers``: a fraction in (0, 1) or a count), checked."""
    d = spec.get("drop_layers")
    if d is None:
        raise PipelineError("compression spec without drop_layers")
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


__all__ = ["layers_to_drop"]
