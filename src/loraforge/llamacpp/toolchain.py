"""Where llama.cpp is: the tools, the converters and the shared ``libllama`` of one build, found at run time.

The llama.cpp in-process library is llama-cpp-python; its source distribution holds the whole llama.cpp tree of
the same revision. :mod:`.build` compiles, once, the tools and the shared ``libllama`` they link into a cache
(``loraforge-llamacpp build``, what ``make setup`` runs); llama-cpp-python loads that same library
(``$LLAMA_CPP_LIB_PATH``, set by ``loraforge.llamacpp.library``), so library and tools are one compilation.

A llama.cpp directory is a source tree with its tools in ``build/bin/`` or ``bin/``: the one the build makes, or
your own (e.g. a CUDA build) named by ``$LLAMA_CPP_DIR`` or the config key ``llama_cpp_dir``. :func:`locate` finds
it and refuses one built from another revision than the installed library.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError

log = logging.getLogger(__name__)

# The pinned library (pyproject.toml pins the same version) and the sha256 of its source distribution.
LLAMA_CPP_PYTHON = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
TOOLS = ("llama-quantize", "llama-imatrix", "llama-server", "llama-perplexity", "llama-gguf-split")
ENV_VAR = "LLAMA_CPP_DIR"
LIBRARY = "libllama.so"
MANIFEST = "loraforge-build.json"


def cache_root() -> Path:
    """$LORAFORGE_CACHE, else $XDG_CACHE_HOME/loraforge, else ~/.cache/loraforge."""
    if os.environ.get("LORAFORGE_CACHE"):
        return Path(os.environ["LORAFORGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loraforge"


def default_dir() -> Path:
    return cache_root() / f"llama.cpp-{LLAMA_CPP_PYTHON}"


@dataclass(frozen=True)
class LlamaCpp:
    """A llama.cpp directory: source tree (converters, gguf-py, models/) and compiled tools."""

    root: Path
    bin: Path
    manifest: dict

    def tool(self, name: str) -> Path:
        path = self.bin / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise PipelineError(f"{path}: llama.cpp tool {name} is missing (build it: make setup)")
        return path

    def library_dir(self) -> Path:
        """Where this build's shared libllama is (what llama-cpp-python loads)."""
        if not (self.bin / LIBRARY).is_file():
            raise PipelineError(
                f"{self.bin}: no {LIBRARY} in this llama.cpp build (tools built before the shared library was: run "
                "`make setup` again)"
            )
        return self.bin

    def script(self, name: str) -> Path:
        path = self.root / name
        if not path.is_file():
            raise PipelineError(f"{path}: llama.cpp script {name} is missing from {self.root}")
        return path

    @property
    def revision(self) -> str:
        """What this tree is: the pinned sdist it came from, or an external tree as named."""
        if self.manifest:
            return f"llama-cpp-python {self.manifest['llama_cpp_python']} sdist"
        return f"external llama.cpp at {self.root}"

    def describe(self) -> dict:
        return {
            "dir": str(self.root),
            "bin": str(self.bin),
            "revision": self.revision,
            "cmake_args": self.manifest.get("cmake_args"),
        }


def _bin_dir(root: Path) -> Path | None:
    for cand in (root / "build" / "bin", root / "bin", root):
        if (cand / "llama-quantize").is_file():
            return cand
    return None


def locate(configured: str | os.PathLike | None = None) -> LlamaCpp:
    """The llama.cpp directory to use: ``configured``, else $LLAMA_CPP_DIR, else the one ``build()`` made."""
    spec = configured or os.environ.get(ENV_VAR)
    root = Path(spec) if spec else default_dir()
    where = f"{ENV_VAR}={spec}" if spec and not configured else str(root)
    if not root.is_dir():
        hint = "point it at a llama.cpp checkout with built tools" if spec else "run `make setup` to build it"
        raise PipelineError(f"{where}: no llama.cpp directory there ({hint})")
    bin_dir = _bin_dir(root)
    if bin_dir is None:
        raise PipelineError(f"{where}: llama.cpp directory without built tools (no build/bin/llama-quantize)")
    manifest = {}
    if (root / MANIFEST).exists():
        manifest = json.loads((root / MANIFEST).read_text())
        if not spec and manifest.get("llama_cpp_python") != _installed_library():
            raise PipelineError(
                f"{root}: tools built from llama-cpp-python {manifest.get('llama_cpp_python')}, but "
                f"{_installed_library()} is installed: run `make setup` to rebuild them at the library's revision"
            )
    return LlamaCpp(root, bin_dir, manifest)


def _installed_library() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return None
