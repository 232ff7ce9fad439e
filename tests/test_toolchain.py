"""loraforge.llamacpp.toolchain and .build: one llama.cpp build serves the tools and the in-process library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loraforge.llamacpp import build, toolchain

XEON_AMX = {"avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"}


def test_native_build_except_where_amx_would_crash():
    assert build._cpu_args({"avx", "avx2", "fma", "avx512f"}, []) == []  # llama.cpp's own -march=native
    args = build._cpu_args(XEON_AMX, [])
    assert args[0] == "-DGGML_NATIVE=OFF" and {"-DGGML_AVX512=ON", "-DGGML_AVX512_BF16=ON"} <= set(args)
    assert not any("AMX" in a for a in args) and "-DGGML_AVX512_VBMI=ON" not in args  # only what the CPU has
    assert build._cpu_args(XEON_AMX, ["-DGGML_NATIVE=ON"]) == []  # the user's choice stands


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


def test_the_tools_are_linked_where_the_project_s_commands_are(tmp_path):
    """What `make setup` does for .venv/bin: links that run (the tools find their libllama from the real path)."""
    built = toolchain.locate()
    links = build.link_tools(built, tmp_path)
    assert sorted(p.name for p in links) == sorted(toolchain.TOOLS)
    assert all(p.is_symlink() and p.resolve() == built.tool(p.name).resolve() for p in links)
    out = subprocess.run([str(tmp_path / "llama-server"), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "version" in (out.stdout + out.stderr)
    assert build.link_tools(built, tmp_path) == links  # again: nothing changes
    (tmp_path / "llama-quantize").unlink()
    (tmp_path / "llama-quantize").write_text("#!/bin/sh\n")  # the user's own file there: left alone
    assert "llama-quantize" not in [p.name for p in build.link_tools(built, tmp_path)]
    assert (tmp_path / "llama-quantize").read_text() == "#!/bin/sh\n"


def test_the_command_runs_without_a_warning_the_user_cannot_act_on():
    for cmd in (
        [sys.executable, "-m", "loraforge.llamacpp", "where"],
        [str(Path(sys.executable).parent / "loraforge-llamacpp"), "where"],
    ):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
        assert "Warning" not in out.stderr, out.stderr
        assert json.loads(out.stdout)["bin"] == str(toolchain.locate().bin)
