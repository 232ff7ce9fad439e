"""The model registry (:mod:`.core`): its database and migrations (:mod:`.database`), versions and artifacts
(:mod:`.versions`), aliases, history and A/B records (:mod:`.aliases`), verification (:mod:`.verification`),
a content-addressed file store (:mod:`.filestore`), errors as types (:mod:`.errors`); the pipeline's register
step (:mod:`.register`), A/B comparisons (:mod:`.compare`), promotion policies (:mod:`.promote`), the CLI
(:mod:`.cli`), and plain functions over a registry ($LORAFORGE_REGISTRY, else ./registry.sqlite)."""

from __future__ import annotations

import os
from pathlib import Path

from .core import Registry
from .database import DEFAULT_PATH, ENV_VAR
from .versions import Artifact, ModelVersion


def _open(registry: str | os.PathLike | None, create: bool = False) -> Registry:
    return Registry(registry or os.environ.get(ENV_VAR) or DEFAULT_PATH, create=create)


def register_model(
    name: str,
    path: str | os.PathLike,
    variant: str,
    lineage: dict,
    metrics: dict | None = None,
    kind: str = "gguf",
    registry: str | os.PathLike | None = None,
) -> ModelVersion:
    """Register one artifact (a GGUF by default) of the adapter revision ``lineage`` describes."""
    return _open(registry, create=True).register(name, lineage, kind, variant, path, metrics)[0]


def get_latest(
    name: str, variant: str, alias: str | None = None, registry: str | os.PathLike | None = None
) -> tuple[ModelVersion, Path]:
    """The newest version with ``variant`` (or the one ``alias`` points at) and its verified registered file."""
    return _open(registry).artifact_file(name, variant, alias=alias)


def promote(name: str, version: int, alias: str, registry: str | os.PathLike | None = None) -> ModelVersion:
    return _open(registry).promote(name, version, alias, reason="promoted by hand")


def rollback_model(name: str, alias: str = "production", registry: str | os.PathLike | None = None) -> ModelVersion:
    return _open(registry).rollback(name, alias)


__all__ = ["Artifact", "ModelVersion", "Registry", "get_latest", "promote", "register_model", "rollback_model"]
