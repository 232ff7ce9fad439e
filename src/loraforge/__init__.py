"""loraforge: LoRA adapter -> merged HF model -> GGUF -> quantized GGUF, measured and registered.

Each stage is a plain function; the Snakemake workflow only chains them. A user who never runs Snakemake can
call them directly::

    from loraforge import merge, convert, quantize
    merge("base/", ["adapter/"], "merged/")
    convert("merged/", "model-F16.gguf", outtype="f16")
    quantize("model-F16.gguf", "model-Q4_K_M.gguf", "Q4_K_M")
"""

__version__ = "0.1.0"

from .convert import convert  # noqa: E402
from .errors import PipelineError  # noqa: E402
from .merge import merge  # noqa: E402
from .quantize import quantize  # noqa: E402

__all__ = ["PipelineError", "convert", "merge", "quantize", "__version__"]
