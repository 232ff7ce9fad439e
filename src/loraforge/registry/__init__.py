"""The model registry: a SQLite store (:mod:`.store`), the pipeline's register step (:mod:`.register`), the CLI
(:mod:`.cli`), and plain functions over the default registry ($LORAFORGE_REGISTRY, else ./registry.sqlite)."""

from __future__ import annotations

import os
from pathlib import Path

from .store import DEFAULT_PATH, ENV_VAR, ModelVersion, Registry

_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry at $LORAFORGE_REGISTRY, else ./registry.sqlite."""
    global _DEFAULT
    want = Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)
    if _DEFAULT is None or _DEFAULT.path != want:
        _DEFAULT = Registry(want)
    return _DEFAULT


def _open(registry: str | os.PathLike | None) -> Registry:
    return Registry(registry) if registry else default_registry()


def register_model(
    name: str,
    files: dict,
    quant_type: str,
    lineage: dict | None = None,
    metrics: dict | None = None,
    registry: str | os.PathLike | None = None,
) -> ModelVersion:
    return _open(registry).register(name, files, quant_type, lineage, metrics)[0]


def get_latest(name: str, alias: str | None = None, registry: str | os.PathLike | None = None) -> ModelVersion:
    return _open(registry).get_latest(name, alias)


def promote(name: str, version: int, alias: str, registry: str | os.PathLike | None = None) -> ModelVersion:
    return _open(registry).promote(name, version, alias)


def rollback_model(name: str, alias: str = "production", registry: str | os.PathLike | None = None) -> ModelVersion:
    return _open(registry).rollback(name, alias)


__all__ = ["ModelVersion", "Registry", "default_registry", "get_latest", "promote", "register_model", "rollback_model"]
