"""What the registry refuses, as types: callers branch on the type, never on a message's words."""

from __future__ import annotations

from ..errors import PipelineError


class RegistryError(PipelineError):
    """A registry that cannot be used as asked; ``str(err)`` is the one line a user sees."""


class NotARegistry(RegistryError):
    """The path holds something that is not a loraforge registry; it was left as it was."""


class NoRegistry(RegistryError):
    """No registry at the path, and the command does not create one."""


class NotFound(RegistryError):
    """No such model name, version, alias or artifact."""


class ImmutableArtifact(RegistryError):
    """A revision's artifact registered again with other bytes."""


class StoredFileMissing(RegistryError):
    """A registered file is gone from the store."""


class StoredFileChanged(RegistryError):
    """A registered file's bytes are not the registered ones."""


class DiskFull(RegistryError):
    """The registry's disk is full; nothing was registered."""
