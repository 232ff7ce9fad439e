"""The compressed-tensors schemes loraforge builds, one row each, and the group size a model's rows allow. A new
scheme is a row of ``SCHEMES`` (its method one the worker knows: tests/test_hfquant.py ties them) and an entry in
the config schema's ``hf_quant.schemes``."""

from __future__ import annotations

import dataclasses

from ..errors import PipelineError


@dataclasses.dataclass(frozen=True)
class Scheme:
    method: str  # gptq | awq | smoothquant+gptq | fp8-dynamic: what the worker runs (worker.METHODS)
    bits: int
    symmetric: bool
    what: str
    weights: str = "group"  # "group": one scale per group of a row (hf_quant.group_size); "channel": one per row
    number: str = "int"  # the weights' (and quantized activations') number type: "int" or "float" (FP8 E4M3)
    activations: bool = False  # the inputs of each quantized layer quantized too, per token, at run time (W8A8)
    calibrated: bool = True  # False: no calibration data (the weights are cast; the probe still comes from the text)

    @property
    def grouped(self) -> bool:
        return self.weights == "group"


# Weight-only 4-bit (activations stay 16-bit): vLLM runs both with its Marlin / Machete kernels (W4A16 on CPU).
# 8-bit weights and activations (W8A8): vLLM's int8 / FP8 scaled-matmul kernels (CUTLASS on GPUs; oneDNN and torch
# on CPUs), activation scales computed per token at run time, as llm-compressor's W8A8 and FP8_DYNAMIC presets.
SCHEMES = {
    "GPTQ-W4A16": Scheme("gptq", 4, True, "GPTQ, 4-bit symmetric weights, 16-bit activations"),
    "AWQ-W4A16": Scheme(
        "awq", 4, False, "AWQ scaling, then 4-bit asymmetric weights (zero points), 16-bit activations"
    ),
    "W8A8-INT8": Scheme(
        "smoothquant+gptq",
        8,
        True,
        "SmoothQuant (strength 0.8), then GPTQ: int8 weights per channel, int8 activations per token (dynamic)",
        weights="channel",
        activations=True,
    ),
    "FP8-DYNAMIC": Scheme(
        "fp8-dynamic",
        8,
        True,
        "FP8 (E4M3) weights per channel, cast without calibration; FP8 activations per token (dynamic)",
        weights="channel",
        number="float",
        activations=True,
        calibrated=False,
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
