"""A full disk ends every step in one line that says so, naming the output, and leaves nothing half-written.
Each step writes onto a small tmpfs mounted for the test (root in CI; skipped elsewhere without root)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"the disk-full tests must run in CI, but mounting a tmpfs failed: {proc.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def run_step(tmp_path, call: str) -> tuple[int, str]:
    """``call`` (a loraforge function call) through loraforge.rule.run, as a rule script makes it."""
    code = f"import sys\nfrom loraforge.rule import run\n{call}\n"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "step.log")], capture_output=True, text=True)
    return proc.returncode, proc.stderr


def one_line(stderr: str, needle: str) -> None:
    """The step's last word is one line with ``needle`` (a tool's own output, logged before it, may hold the
    tool's traceback; the step adds none)."""
    lines = stderr.strip().splitlines()
    assert needle in lines[-1] and "ERROR loraforge:" in lines[-1], stderr[-2000:]
    assert not any(ln.startswith("Traceback") for ln in lines[-5:]), stderr[-2000:]


def test_merge(models, small_disk, tmp_path):
    out = small_disk / "merged"
    rc, err = run_step(
        tmp_path,
        f"from loraforge.merging import merge\nrun(sys.argv[1], merge, base_dir={str(models['base'])!r}, "
        f"adapters=[{str(models['alpha'])!r}], out_dir={str(out)!r})",
    )
    assert rc == 1
    one_line(err, f"{out}: no space left on device; nothing was published")
    assert os.listdir(small_disk) == []


def test_convert(models, small_disk, tmp_path):
    out = small_disk / "m-F16.gguf"
    rc, err = run_step(
        tmp_path,
        f"from loraforge import convert\nrun(sys.argv[1], convert, model_dir={str(models['base'])!r}, "
        f"out_gguf={str(out)!r})",
    )
    assert rc == 1
    one_line(err, f"{out}: no space left on device (writing it with llama.cpp's converter")
    assert os.listdir(small_disk) == []


def test_quantize(f16_gguf, small_disk, tmp_path):
    out = small_disk / "m-Q8_0.gguf"
    rc, err = run_step(
        tmp_path,
        f"from loraforge import quantize\nrun(sys.argv[1], quantize, src_gguf={str(f16_gguf)!r}, "
        f"out_gguf={str(out)!r}, qtype='Q8_0')",
    )
    assert rc == 1
    one_line(err, f"{out}: no space left on device (writing it with llama-quantize Q8_0)")
    assert os.listdir(small_disk) == []


def test_registry(small_disk, tmp_path):
    """The registry says the disk is full; it never claims a file it just created was left untouched."""
    big = tmp_path / "big.gguf"
    big.write_bytes(os.urandom(3 << 20))
    (small_disk / "filler").write_bytes(b"x" * (1 << 20))
    lineage = {"base_model": {"sha256": "b"}, "adapters": [{"sha256": "a", "weight": 1.0}], "settings": {}}
    rc, err = run_step(
        tmp_path,
        "from loraforge.registry import register_model\n"
        f"run(sys.argv[1], register_model, name='code', path={str(big)!r}, variant='Q8_0', "
        f"lineage={lineage!r}, registry={str(small_disk / 'registry.sqlite')!r})",
    )
    assert rc == 1
    one_line(err, "no space left on device")
    assert "left untouched" not in err
    assert not list(small_disk.rglob("*.gguf")) and not list(small_disk.rglob("*.tmp"))
