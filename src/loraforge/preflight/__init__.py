"""Everything checked before heavy work, from JSON and safetensors headers only: bad input fails in a second
with one line naming the file and the problem."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError
from .adapter import Adapter, check_adapter_against_base, inspect_adapter
from .base import BaseModel, inspect_base


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
    return base, loaded


__all__ = ["Adapter", "AdapterSpec", "BaseModel", "as_specs", "inspect_adapter", "inspect_base", "validate_inputs"]
