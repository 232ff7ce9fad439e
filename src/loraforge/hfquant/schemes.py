"""The compressed-tensors schemes loraforge builds, one row each, and the group size a model's rows allow. A new
scheme is a row of ``SCHEMES`` (its method one the worker knows: tests/test_hfquant.py ties them) and an entry in
the config schema's ``hf_quant.schemes``."""

from __future__ import annotations

import dataclasses

from ..errors import PipelineError


@dataclasses.dataclass(frozen=True)
class Scheme:
    method: str  # gptq | awq
    bits: int
    symmetric: bool
    what: str


# Weight-only 4-bit (activations stay 16-bit): vLLM runs both with its Marlin / Machete kernels.
SCHEMES = {
    "GPTQ-W4A16": Scheme("gptq", 4, True, "GPTQ, 4-bit symmetric weights, 16-bit activations"),
    "AWQ-W4A16": Scheme(
        "awq", 4, False, "AWQ scaling, then 4-bit asymmetric weights (zero points), 16-bit activations"
    ),
}
GROUP_SIZES = (128, 64, 32)  # tried in order when none is given: the largest that divides every quantized row
IGNORE = ("lm_head",)  # kept in 16 bits, as llm-compressor's examples and vLLM's checkpoints do


def scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise PipelineError(f"hf_quant scheme {name!r} is not one of {', '.join(SCHEMES)}")
    return SCHEMES[name]


def linear_widths(model_dir) -> dict[str, int]:
    """The input width (columns) of every 2-D ``*_proj.weight`` in the decoder layers: what a quantization group
    must divide. From the safetensors headers only."""
    from ..models.streamed import checkpoint_index

    out = {}
    for name, info in checkpoint_index(model_dir).items():
        if ".layers." in name and name.endswith("_proj.weight") and len(info.shape) == 2:
            out[name] = int(info.shape[1])
    if not out:
        raise PipelineError(f"{model_dir}: no decoder *_proj.weight tensors found to quantize")
    return out


def group_size_for(model_dir, requested: int | None = None) -> int:
    """``requested`` if it divides every quantized row of ``model_dir``, else one line; or, with none, the
    largest of 128, 64, 32 that does."""
    widths = linear_widths(model_dir)
    sizes = sorted(set(widths.values()))
    if requested is not None:
        bad = [w for w in sizes if w % requested]
        if bad:
            name = next(n for n, w in widths.items() if w == bad[0])
            raise PipelineError(
                f"{model_dir}: hf_quant.group_size {requested} does not divide {name}'s rows of {bad[0]} "
                f"(row widths: {', '.join(map(str, sizes))}); use a divisor such as "
                f"{next((g for g in GROUP_SIZES if all(w % g == 0 for w in sizes)), 'none of 128/64/32')}"
            )
        return requested
    for g in GROUP_SIZES:
        if all(w % g == 0 for w in sizes):
            return g
    raise PipelineError(
        f"{model_dir}: no group size of {', '.join(map(str, GROUP_SIZES))} divides every quantized row "
        f"(widths {', '.join(map(str, sizes))}); set hf_quant.group_size"
    )


def n_params(model_dir) -> int:
    from ..models.streamed import checkpoint_index

    n = 0
    for info in checkpoint_index(model_dir).values():
        k = 1
        for d in info.shape:
            k *= int(d)
        n += k
    return n
