"""loraforge.llamacpp.toolchain: one llama.cpp build serves the tools and the in-process library."""

from __future__ import annotations

import subprocess
import sys

from loraforge.llamacpp import toolchain

XEON_AMX = {"avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"}


def test_native_build_except_where_amx_would_crash():
    assert toolchain._cpu_args({"avx", "avx2", "fma", "avx512f"}, []) == []  # llama.cpp's own -march=native
    args = toolchain._cpu_args(XEON_AMX, [])
    assert args[0] == "-DGGML_NATIVE=OFF" and {"-DGGML_AVX512=ON", "-DGGML_AVX512_BF16=ON"} <= set(args)
    assert not any("AMX" in a for a in args) and "-DGGML_AVX512_VBMI=ON" not in args  # only what the CPU has
    assert toolchain._cpu_args(XEON_AMX, ["-DGGML_NATIVE=ON"]) == []  # the user's choice stands


def test_the_library_in_this_process_is_the_tools_build():
    """llama-cpp-python loads the libllama compiled beside the tools, not a copy of its own."""
    code = (
        "from loraforge.llamacpp.library import llama_cpp; import os; lc = llama_cpp(); "
        "print(os.environ['LLAMA_CPP_LIB_PATH']); print(lc.llama_cpp._lib._name)"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "LLAMA_CPP_LIB_PATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    lib_dir, loaded = out.split()
    built = toolchain.locate()
    assert lib_dir == str(built.bin) and loaded == str(built.bin / "libllama.so")
    assert (built.bin / "llama-quantize").is_file() and "-DBUILD_SHARED_LIBS=ON" in built.manifest["cmake_args"]
