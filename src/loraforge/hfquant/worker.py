"""The calibration itself, run by the Python of llm-compressor's own environment (loraforge.hfquant): it imports
llm-compressor, transformers, datasets and torch only, never loraforge, whose stack may be newer than
llm-compressor accepts.

    <llm-compressor python> hfquant_worker.py request.json

The request names the model, the output directory, the scheme (its method, bits, number type, weight groups and
whether activations are quantized), the calibration windows (token ids) and the threads.
The worker calibrates, saves the compressed checkpoint (with the tokenizer) and the calibrated model's logits on
the check tokens (``logits.npy``, for the reload check). Errors exit 2 with one line on stderr.
"""

from __future__ import annotations

import json
import sys
import time

METHODS = ("gptq", "awq", "smoothquant+gptq", "fp8-dynamic")  # loraforge.hfquant.SCHEMES names one per scheme
SMOOTHING_STRENGTH = 0.8  # llm-compressor's W8A8 examples


def _recipe(req: dict):
    if req["method"] not in METHODS:  # never a silent fall-through to another method
        raise ValueError(f"calibration method {req['method']!r} is not one of {', '.join(METHODS)}")
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    number = req.get("number", "int")
    grouped = req.get("weights", "group") == "group"
    weights = QuantizationArgs(
        num_bits=req["bits"],
        type=number,
        symmetric=req["symmetric"],
        strategy="group" if grouped else "channel",
        group_size=req["group_size"] if grouped else None,
    )
    # W8A8: each quantized layer's input quantized per token at run time (a scale per token, no calibration)
    activations = (
        QuantizationArgs(num_bits=req["bits"], type=number, symmetric=True, strategy="token", dynamic=True)
        if req.get("activations")
        else None
    )
    groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights, input_activations=activations)}
    if req["method"] in ("gptq", "smoothquant+gptq"):
        from llmcompressor.modifiers.quantization import GPTQModifier

        gptq = GPTQModifier(config_groups=groups, ignore=req["ignore"])
        if req["method"] == "gptq":
            return [gptq]
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        # activation outliers moved into the weights first, where GPTQ absorbs them (SmoothQuant, Xiao et al. 2023)
        return [SmoothQuantModifier(smoothing_strength=SMOOTHING_STRENGTH), gptq]
    from llmcompressor.modifiers.quantization import QuantizationModifier

    if req["method"] == "fp8-dynamic":
        return [QuantizationModifier(config_groups=groups, ignore=req["ignore"])]
    from llmcompressor.modifiers.transform.awq import AWQModifier

    return [AWQModifier(), QuantizationModifier(config_groups=groups, ignore=req["ignore"])]


def _calibrated(req: dict) -> bool:
    return req["method"] != "fp8-dynamic"


def main(request_file: str) -> int:
    try:
        return _run(json.loads(open(request_file).read()))
    except Exception as e:  # loading or saving: one line, the job's error
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"{type(e).__name__}: {first}", file=sys.stderr)
        return 2


def _run(req: dict) -> int:
    import numpy as np
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.pipelines import cache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, req["threads"]))
    if not torch.cuda.is_available():
        # llm-compressor 0.14's AWQ pins cached activations for faster host-to-GPU copies, which fails without an
        # accelerator ("Cannot access accelerator device"); with no GPU there is nothing to copy to
        cache.IntermediatesCache.pin_memory = lambda self, *a, **k: None
    tokenizer = AutoTokenizer.from_pretrained(req["model_dir"], local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(req["model_dir"], dtype="auto", local_files_only=True).eval()
    windows = req["windows"]
    data = Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]})
    t0 = time.time()
    try:
        calibration = (
            {
                "dataset": data,
                "num_calibration_samples": len(windows),
                "max_seq_length": max(len(w) for w in windows),
                "shuffle_calibration_samples": False,  # the same windows in the same order: the same bytes every run
            }
            if _calibrated(req)
            else {}  # FP8's weights are cast: nothing to calibrate on
        )
        oneshot(model=model, recipe=_recipe(req), **calibration)
    except Exception as e:  # llm-compressor's own errors (tracing, unsupported layers) as one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"llm-compressor could not apply {req['scheme']}: {type(e).__name__}: {first}", file=sys.stderr)
        return 2
    seconds = time.time() - t0
    with torch.no_grad():
        logits = model(torch.tensor([req["check_tokens"]])).logits[0].float().numpy()
    model.save_pretrained(req["out_dir"], save_compressed=True)
    tokenizer.save_pretrained(req["out_dir"])
    np.save(req["logits"], logits)
    json.dump({"seconds": round(seconds, 1)}, open(req["result"], "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
