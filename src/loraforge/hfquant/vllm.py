"""What vLLM's LoRA (``--enable-lora``) cannot serve, read from an adapter's files."""

from __future__ import annotations


def vllm_lora_refusal(adapters) -> str | None:
    """Why an adapter (a stack spec) cannot be served by vLLM's LoRA (``--enable-lora``), or None. vLLM's
    ``PEFTHelper`` refuses DoRA, ``modules_to_save`` and adapter biases; a request takes one adapter, not a stack."""
    from ..preflight import as_specs, inspect_adapter

    specs = as_specs(adapters)
    if len(specs) > 1:
        return "a stack of several adapters: a vLLM request applies one LoRA"
    ad = inspect_adapter(specs[0].path)
    cfg = ad.config
    if cfg.get("use_dora") or any(lm.magnitude_key for lm in ad.lora.values()):
        return "DoRA: vLLM does not support it"
    if cfg.get("modules_to_save") or ad.replaced:
        return "modules_to_save: vLLM serves only LoRA deltas"
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        return "adapter biases: vLLM does not support them"
    return None
