"""Building llama.cpp at the revision of the library we evaluate with: one build for the tools and the library.

``build()`` fetches llama-cpp-python's pinned source distribution through pip (checked by sha256), unpacks its
llama.cpp tree (``vendor/llama.cpp``: the converters, the tools, test vocabularies and chat templates) into the
cache and compiles, once, the tools (quantize, imatrix, server, perplexity, gguf-split) and the shared ``libllama``
they link; ``make setup`` installs llama-cpp-python without compiling it again (``CMAKE_ARGS=-DLLAMA_BUILD=OFF``).
The command also links the tools into the virtual environment's ``bin/``, beside the project's own commands:

    loraforge-llamacpp build     # what `make setup` runs (minutes, once); links the tools into .venv/bin
    loraforge-llamacpp where     # the directory in use, its revision and tools

(``python -m loraforge.llamacpp`` is the same command.) Finding a build at run time is :mod:`.toolchain`'s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..errors import PipelineError
from ..progress import run_logged
from .toolchain import (
    LIBRARY,
    LLAMA_CPP_PYTHON,
    MANIFEST,
    SDIST_SHA256,
    TOOLS,
    LlamaCpp,
    _bin_dir,
    default_dir,
    locate,
)

log = logging.getLogger(__name__)


def _fetch_sdist(work: Path) -> Path:
    """The pinned sdist through pip (its cache and index settings), checked against the pinned sha256."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--quiet",
        f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
        "-d",
        str(work),
    ]
    log.info("fetching the llama-cpp-python %s sdist: %s", LLAMA_CPP_PYTHON, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"pip could not fetch llama-cpp-python=={LLAMA_CPP_PYTHON}: {proc.stderr.strip()[-300:]}")
    (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise PipelineError(f"{sdist.name}: sha256 {digest} is not the pinned {SDIST_SHA256}")
    return sdist


def _extract_tree(sdist: Path, dest: Path) -> None:
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            if m.name.startswith(prefix) and (m.isfile() or m.isdir()) and not m.name.endswith("/.git"):
                m.name = m.name[len(prefix) :]
                if m.name:
                    members.append(m)
        tar.extractall(dest, members=members, filter="data")


# CPU features (/proc/cpuinfo flags) -> the ggml options that compile for them, for a build that is native but for
# AMX (see _cpu_args)
GGML_CPU_FEATURES = {
    "avx": "GGML_AVX",
    "avx2": "GGML_AVX2",
    "fma": "GGML_FMA",
    "f16c": "GGML_F16C",
    "bmi2": "GGML_BMI2",
    "avx_vnni": "GGML_AVX_VNNI",
    "avx512f": "GGML_AVX512",
    "avx512vbmi": "GGML_AVX512_VBMI",
    "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
}


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _cpu_args(flags: set[str], user_args: list[str]) -> list[str]:
    """llama.cpp's native build, except on CPUs with AMX: this revision's AMX kernels crash (SIGSEGV) on K-quant
    and Q8_0 GGUFs (measured on a Xeon with amx_int8: llama-perplexity on a Q4_K_M GGUF, while a build without
    AMX, or --no-repack, runs). There the build names every other feature of the CPU instead of -march=native."""
    if not any(f.startswith("amx") for f in flags) or any("GGML_NATIVE" in a for a in user_args):
        return []
    return ["-DGGML_NATIVE=OFF", *(f"-D{opt}=ON" for flag, opt in GGML_CPU_FEATURES.items() if flag in flags)]


def _cmake_args() -> list[str]:
    """Tools and the shared library with llama.cpp's defaults; $CMAKE_ARGS (as for llama-cpp-python, e.g.
    -DGGML_CUDA=on) added. Libraries find each other relative to themselves ($ORIGIN): the tree is moved after
    the build."""
    user = shlex.split(os.environ.get("CMAKE_ARGS", ""))
    args = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=ON",
        *_cpu_args(cpu_flags(), user),
    ]
    return args + user


def build(dest: Path | None = None, jobs: int | None = None, force: bool = False) -> LlamaCpp:
    """Fetch, unpack and compile llama.cpp's tools at the library's revision into ``dest`` (the cache by default).

    Nothing to do when ``dest`` already holds a build of the same sdist with the same cmake arguments."""
    dest = Path(dest) if dest else default_dir()
    args = _cmake_args()
    manifest_path = dest / MANIFEST
    if manifest_path.exists() and not force:
        m = json.loads(manifest_path.read_text())
        if m.get("sdist_sha256") == SDIST_SHA256 and m.get("cmake_args") == args and _bin_dir(dest):
            log.info("llama.cpp tools already built in %s", dest)
            return LlamaCpp(dest, _bin_dir(dest), m)
    for tool in ("cmake", "c++"):
        if not shutil.which(tool):
            raise PipelineError(f"{tool} not found: building llama.cpp's tools needs cmake and a C++ compiler")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        work = Path(tmp)
        sdist = _fetch_sdist(work)
        tree = work / "tree"
        _extract_tree(sdist, tree)
        jobs = jobs or os.cpu_count() or 2
        log.info("compiling libllama, %s with %d jobs (minutes): %s", ", ".join(TOOLS), jobs, " ".join(args))
        build = ["cmake", "--build", str(tree / "build"), "-j", str(jobs), "--target"]
        for what, cmd in (  # libllama, then the tools: cmake counts percent per invocation, so each ETA holds
            ("cmake -S", ["cmake", "-S", str(tree), "-B", str(tree / "build"), *args]),
            ("cmake --build libllama", [*build, "llama"]),
            ("cmake --build the tools", [*build, *TOOLS]),
        ):
            rc, output = run_logged(cmd, what, every=30, logger=log)
            if rc != 0:
                (work / "build.log").write_text(output)
                lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
                # the compiler's or cmake's own statement, not make's "*** Error 2" after it
                last = next((ln for ln in reversed(lines) if "error" in ln.lower() and "***" not in ln), None)
                last = last or (lines[-1] if lines else "no output")
                raise PipelineError(f"building llama.cpp's tools failed ({' '.join(cmd[:2])}): {last}")
        # keep the tools and libraries, drop the object files
        bins = tree / "build" / "bin"
        keep = work / "bin"
        shutil.move(bins, keep)
        shutil.rmtree(tree / "build")
        (tree / "build").mkdir()
        shutil.move(keep, tree / "build" / "bin")
        manifest = {
            "llama_cpp_python": LLAMA_CPP_PYTHON,
            "sdist_sha256": SDIST_SHA256,
            "cmake_args": args,
            "tools": list(TOOLS),
            "library": LIBRARY,
        }
        (tree / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tree, dest)
    log.info("llama.cpp tools built in %s", dest)
    return LlamaCpp(dest, dest / "build" / "bin", manifest)


def venv_bin() -> Path | None:
    """The bin directory of the virtual environment this Python runs in (``.venv/bin``), or None outside one."""
    if sys.prefix == sys.base_prefix:
        return None
    return Path(sys.prefix) / "bin"


def link_tools(lc: LlamaCpp, bin_dir: Path) -> list[Path]:
    """Symbolic links to the build's tools in ``bin_dir``, beside the project's own commands (``.venv/bin/
    llama-server``): the tools resolve their libllama from their real directory. A file there that is not such a
    link is left alone."""
    made = []
    for name in TOOLS:
        target, link = lc.tool(name), bin_dir / name
        if link.is_symlink():
            if Path(os.readlink(link)) == target:
                made.append(link)
                continue
            link.unlink()
        elif link.exists():
            log.warning("%s exists and is not a link to llama.cpp's build: left as it is", link)
            continue
        link.symlink_to(target)
        made.append(link)
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="loraforge-llamacpp", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="fetch the pinned llama.cpp tree and compile its tools (once)")
    b.add_argument("--dest", help=f"where (default {default_dir()})")
    b.add_argument("--jobs", type=int)
    b.add_argument("--force", action="store_true")
    sub.add_parser("where", help="the llama.cpp directory in use")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        lc = build(a.dest, a.jobs, a.force) if a.cmd == "build" else locate()
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    described = lc.describe()
    if a.cmd == "build" and (where := venv_bin()):
        links = link_tools(lc, where)
        log.info("llama.cpp's tools linked into %s: %s", where, ", ".join(p.name for p in links))
    if where := venv_bin():
        described["linked_into"] = str(where)
    print(json.dumps(described, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
