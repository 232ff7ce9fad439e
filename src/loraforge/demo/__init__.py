"""The demo's inputs, all real and all from the package registry or Python itself: SmolLM2-135M-Instruct
(:mod:`.smollm2`), texts (:mod:`.corpora`) and LoRA adapters trained on them (:mod:`.train`). Importing this
package loads no torch: the workflow imports it in every Snakemake process."""

from .corpora import DOMAINS, corpora, write_texts
from .smollm2 import fetch_gguf, import_base
from .train import train_lora

__all__ = ["DOMAINS", "corpora", "fetch_gguf", "import_base", "train_lora", "write_texts"]
