"""loraforge: LoRA adapter -> merged HF model -> GGUF -> quantized GGUF, measured and registered.

Each stage is a plain function; the Snakemake workflow only chains them. A user who never runs Snakemake can
call them directly::

    from loraforge import merge, convert, quantize, evaluate, compute_reference
    merge("base/", ["adapter/"], "merged/")
    convert("merged/", "model-F16.gguf", outtype="f16")
    quantize("model-F16.gguf", "model-Q4_K_M.gguf", "Q4_K_M")

The stages live in subpackages named after what they do (merging, conversion, quantization, evaluation,
registry); importing this package loads neither torch nor llama.cpp: each function imports what it needs.
"""

from ._version import __version__
from .conversion import convert
from .errors import PipelineError
from .evaluation import Metrics, compute_reference, evaluate
from .merging import merge
from .quantization import quantize
from .registry import Registry, get_latest, promote, register_model, rollback_model

__all__ = [
    "Metrics",
    "PipelineError",
    "Registry",
    "__version__",
    "compute_reference",
    "convert",
    "evaluate",
    "get_latest",
    "merge",
    "promote",
    "quantize",
    "register_model",
    "rollback_model",
]
