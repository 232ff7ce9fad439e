"""loraforge: LoRA adapter -> merged HF model -> GGUF -> quantized GGUF, measured and registered.

Each stage is a plain function; the Snakemake workflow only chains them. A user who never runs Snakemake can
call them directly::

    from loraforge import merge, convert, quantize, register_model, get_latest, rollback_model
    merge("base/", ["adapter/"], "merged/")
    convert("merged/", "model-F16.gguf", outtype="f16")
    quantize("model-F16.gguf", "model-Q4_K_M.gguf", "Q4_K_M")

Imports are lazy, so the streaming merge runs without loading torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "PipelineError": "errors", "merge": "merge", "convert": "convert", "quantize": "quantize",
    "evaluate": "evaluate", "register_model": "registry", "get_latest": "registry", "promote": "registry",
    "rollback_model": "registry", "Registry": "registry",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'loraforge' has no attribute {name!r}")
