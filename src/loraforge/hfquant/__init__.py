"""GPU-serving checkpoints in the compressed-tensors format that vLLM (and SGLang, TGI) serve, made by llm-compressor
(vLLM's own quantization library) from an HF model directory: 4-bit GPTQ and AWQ weights calibrated on the
calibration text (W4A16); int8 weights and activations, SmoothQuant + GPTQ (W8A8-INT8); FP8 weights and
activations, cast without calibration (FP8-DYNAMIC). The W8A8 schemes quantize each layer's input per token at run
time; the stand-in models that too (models.hf.quantize_activations).

llm-compressor 0.14 caps transformers at 5.17, older than the rest of loraforge runs on, so it lives in an
environment of its own (``python -m loraforge.hfquant setup``, run by ``make setup-hfquant``, in the cache beside the
llama.cpp build; ``$LORAFORGE_LLMCOMPRESSOR_PYTHON`` names another). The calibration runs there
(:mod:`loraforge.hfquant.worker`); everything else, the reload check and the evaluation included, runs in
loraforge's own stack, which loads the checkpoints through transformers and compressed-tensors as a serving stack
does.

A checkpoint is checked before it is published: it is loaded back from disk through transformers (decompressed)
and its logits on a probe window must match the calibrated model's in memory. The sidecar
(``<checkpoint>.json``) records the scheme, group size, calibration, time, size, bits per weight, the content
fingerprint of the directory, and the probe's next-token log-probs, which anyone can re-check later
(:func:`probe_logprobs`).

The package: the schemes table (:mod:`.schemes`), the calibration and its checks (:mod:`.calibration`),
llm-compressor's environment (:mod:`.environment`), the worker run there (:mod:`.worker`), and what vLLM's LoRA
refuses (:mod:`.vllm`).
"""

from .calibration import PROBE_TOKENS, calibration_windows, probe_logprobs, quantize_checkpoint
from .environment import LLMCOMPRESSOR, PYTHON_ENV, env_dir, main, setup_env, tool_python, tool_versions
from .schemes import GROUP_SIZES, IGNORE, SCHEMES, Scheme, group_size_for, linear_widths, scheme
from .vllm import vllm_lora_refusal

__all__ = [
    "GROUP_SIZES",
    "IGNORE",
    "LLMCOMPRESSOR",
    "PROBE_TOKENS",
    "PYTHON_ENV",
    "SCHEMES",
    "Scheme",
    "calibration_windows",
    "env_dir",
    "group_size_for",
    "linear_widths",
    "main",
    "probe_logprobs",
    "quantize_checkpoint",
    "scheme",
    "setup_env",
    "tool_python",
    "tool_versions",
    "vllm_lora_refusal",
]
