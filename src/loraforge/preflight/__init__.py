"""Everything checked before heavy work, from JSON and safetensors headers only: bad input fails in a second
with one line naming the file and the problem."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError
from .adapter import Adapter, check_adapter_against_base, inspect_adapter, tokenizer_source
from .base import BaseModel, inspect_base, is_embedding
from .tokenizer import check_tokenizer_fits


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter of a merge, applied in list order with ``weight`` multiplying its delta."""

    path: Path
    weight: float = 1.0


def as_specs(adapters) -> list[AdapterSpec]:
    """Paths, dicts with path/weight, or AdapterSpecs (one or a list) -> a non-empty list of AdapterSpec."""
    specs = []
    for a in adapters if isinstance(adapters, list | tuple) else [adapters]:
        if isinstance(a, AdapterSpec):
            specs.append(a)
        elif isinstance(a, dict):
            specs.append(AdapterSpec(Path(a["path"]), float(a.get("weight", 1.0))))
        elif isinstance(a, str | os.PathLike):
            specs.append(AdapterSpec(Path(a)))
        else:
            raise PipelineError(f"adapter {a!r}: expected a path, {{path, weight}} or AdapterSpec")
    if not specs:
        raise PipelineError("no adapter given to merge")
    return specs


def validate_inputs(base_dir, adapters) -> tuple[BaseModel, list[tuple[AdapterSpec, Adapter]]]:
    """All checks that need no weights: raises PipelineError with one line on the first problem."""
    base = inspect_base(base_dir)
    loaded = []
    for spec in as_specs(adapters):
        ad = inspect_adapter(spec.path)
        check_adapter_against_base(ad, base)
        loaded.append((spec, ad))
    check_tokenizer_fits(tokenizer_source(base, [ad for _s, ad in loaded]), merged_vocab_size(base, loaded))
    return base, loaded


def merged_vocab_size(base: BaseModel, loaded: list[tuple[AdapterSpec, Adapter]]) -> int:
    """Rows of the merged model's embedding: the base's, or those of an adapter that replaces it (added tokens)."""
    rows = next((t.shape[0] for k, t in base.tensors.items() if is_embedding(k)), None)
    for _spec, ad in loaded:
        for name, key in ad.replaced.items():
            if is_embedding(name):
                rows = ad.tensors[key].shape[0]
    return rows if rows is not None else int(base.config.get("vocab_size", 0))


__all__ = [
    "Adapter",
    "AdapterSpec",
    "BaseModel",
    "as_specs",
    "inspect_adapter",
    "inspect_base",
    "is_embedding",
    "validate_inputs",
]
