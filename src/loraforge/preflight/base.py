"""The base model directory, read from config.json and safetensors headers only (never the weights)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError
from ..io.safetensors import TensorInfo, read_header
from .files import read_json

# the input embedding's tensor name: Llama-style models and GPT-2 (whose output layer ties to it)
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight")


def is_embedding(name: str) -> bool:
    return name.endswith(EMBEDDING_SUFFIXES)


@dataclass
class BaseModel:
    path: Path
    config: dict
    tensors: dict[str, TensorInfo]
    weight_files: list[Path]

    @property
    def tied_embeddings(self) -> bool:
        tied = self.config.get("tie_word_embeddings")
        if tied is None:
            tied = (self.config.get("text_config") or {}).get("tie_word_embeddings", False)
        return bool(tied) and "lm_head.weight" not in self.tensors

    @property
    def dtype(self) -> str:
        """The dominant floating dtype of the weights (safetensors name)."""
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.dtype] = counts.get(t.dtype, 0) + math.prod(t.shape)
        return max(counts, key=counts.get) if counts else "F32"

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def inspect_base(path: str | Path, what: str = "base model") -> BaseModel:
    """Config and tensor headers of an HF model directory; refuses what the pipeline cannot read."""
    p = Path(path)
    if not p.exists():
        raise PipelineError(f"{p}: {what} directory does not exist")
    if not p.is_dir():
        raise PipelineError(f"{p}: {what} is a file, expected a Hugging Face model directory")
    cfg = read_json(p / "config.json")
    if "quantization_config" in cfg:
        method = cfg["quantization_config"].get("quant_method", "unknown")
        raise PipelineError(
            f"{p / 'config.json'}: {what} is quantized ({method}); merging into quantized weights "
            "is lossy and not supported: use the unquantized model"
        )
    index = p / "model.safetensors.index.json"
    if index.exists():
        files = sorted({p / f for f in read_json(index).get("weight_map", {}).values()})
    else:
        files = sorted(p.glob("*.safetensors"))
    if not files:
        if list(p.glob("*.bin")):
            raise PipelineError(f"{p}: {what} weights are pytorch .bin files; re-save them as safetensors")
        raise PipelineError(f"{p}: {what} directory has no .safetensors weights")
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        if not f.exists():
            raise PipelineError(f"{f}: listed in {index.name} but missing")
        tensors.update(read_header(f))
    return BaseModel(p, cfg, tensors, files)
