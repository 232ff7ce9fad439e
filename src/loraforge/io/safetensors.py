"""Raw safetensors I/O without torch: headers, byte ranges of tensors, storage dtypes, writing shards.

Tensor data is read with plain reads of byte ranges (``pread``), not mmap: touched pages of a mapping count as
resident memory, so a streaming reader would look as large as the model. bfloat16 is handled as uint16 bits.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PipelineError

# safetensors dtype -> numpy dtype of its raw storage (bfloat16 is stored as uint16 bits)
STORAGE_NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}
ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}
MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors dtype name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset of the data in ``file``
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Parse a .safetensors header without touching tensor data; refuse a file shorter than its header says."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise PipelineError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER:
                raise PipelineError(f"{path}: not a safetensors file (header length {n})")
            header = json.loads(f.read(n))
        size = path.stat().st_size
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path}: unreadable safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise PipelineError(f"{path}: not a safetensors file (header is not a JSON object)")
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            s, e = meta["data_offsets"]
            info = TensorInfo(meta["dtype"], tuple(int(d) for d in meta["shape"]), path, base + s, base + e)
        except (KeyError, TypeError, ValueError):
            raise PipelineError(f"{path}: malformed header entry for tensor {name!r}") from None
        if info.dtype in ITEMSIZE and info.nbytes != ITEMSIZE[info.dtype] * math.prod(info.shape):
            raise PipelineError(
                f"{path}: tensor {name} has {info.nbytes} bytes for shape {list(info.shape)} {info.dtype}"
            )
        if info.end > size:
            raise PipelineError(f"{path}: truncated: tensor {name} ends at byte {info.end}, the file has {size}")
        out[name] = info
    return out


def rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    """A tensor seen as 2-D: its first dimension by the rest (1-D and scalars are one row)."""
    if len(shape) > 1:
        return shape[0], math.prod(shape[1:])
    return 1, math.prod(shape)


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values of a safetensors ``dtype`` -> a new float32 array."""
    if dtype == "BF16":
        out = raw.astype(np.uint32)
        out <<= 16
        return out.view(np.float32)
    return raw.astype(np.float32)


def encode(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> storage of ``dtype``, rounding to nearest even (as torch's casts do). Consumes ``x``."""
    if dtype == "BF16":
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        lsb = bits >> 16
        lsb &= 1
        bits += 0x7FFF
        bits += lsb
        bits >>= 16
        return bits.astype(np.uint16)
    return x.astype(STORAGE_NUMPY[dtype])


def _pread(fd: int, offset: int, n: int, path) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.preadv(fd, [view[got:]], offset + got)
        if not k:
            raise PipelineError(f"{path}: truncated tensor data")
        got += k
    return buf


class TensorReader:
    """Open file descriptors for reading tensor byte ranges (plain reads, no mmap). Use as a context manager."""

    def __init__(self):
        self.fds: dict[Path, int] = {}

    def rows(self, info: TensorInfo, r0: int, r1: int) -> np.ndarray:
        """Rows r0:r1 of a tensor (viewed as 2-D: first dim x the rest), as stored."""
        if info.dtype not in STORAGE_NUMPY:
            raise PipelineError(f"{info.file}: cannot read a tensor of dtype {info.dtype} as floats")
        _rows, cols = rows_cols(info.shape)
        item = ITEMSIZE[info.dtype]
        if info.file not in self.fds:
            self.fds[info.file] = os.open(info.file, os.O_RDONLY)
        buf = _pread(self.fds[info.file], info.start + r0 * cols * item, (r1 - r0) * cols * item, info.file)
        return np.frombuffer(buf, dtype=STORAGE_NUMPY[info.dtype]).reshape(r1 - r0, cols)

    def readinto(self, info: TensorInfo, r0: int, r1: int, out) -> None:
        """Rows r0:r1 of a tensor, as stored, into ``out`` (a writable buffer of exactly their bytes): no
        intermediate copy, for a caller that converts them itself (loraforge.models.streamed)."""
        _rows, cols = rows_cols(info.shape)
        item = ITEMSIZE[info.dtype]
        view = memoryview(out).cast("B")
        n = (r1 - r0) * cols * item
        if view.nbytes != n:
            raise ValueError(f"{info.file}: a buffer of {view.nbytes} bytes for {n} bytes of rows")
        if info.file not in self.fds:
            self.fds[info.file] = os.open(info.file, os.O_RDONLY)
        offset, got = info.start + r0 * cols * item, 0
        while got < n:
            k = os.preadv(self.fds[info.file], [view[got:]], offset + got)
            if not k:
                raise PipelineError(f"{info.file}: truncated tensor data")
            got += k

    def whole(self, info: TensorInfo) -> np.ndarray:
        return self.rows(info, 0, rows_cols(info.shape)[0]).reshape(info.shape)

    def float32(self, info: TensorInfo) -> np.ndarray:
        """The whole tensor as float32."""
        return decode(self.whole(info), info.dtype)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tensor_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return ITEMSIZE[dtype] * math.prod(shape)


def write_header(f, names: list[str], tensors: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Write the 8-byte length and JSON header of a safetensors file holding ``names`` in that order."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        dtype, shape = tensors[name]
        n = tensor_nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)


def copy_range(src: Path, start: int, end: int, dst) -> None:
    """Append bytes start:end of ``src`` to the unbuffered file ``dst``, in the kernel where it can."""
    with open(src, "rb", buffering=0) as s:
        left, offset = end - start, start
        try:
            while left:
                k = os.copy_file_range(s.fileno(), dst.fileno(), min(left, 1 << 30), offset)
                if not k:
                    raise PipelineError(f"{src}: truncated tensor data")
                left, offset = left - k, offset + k
        except OSError as e:
            if e.errno not in _NO_COPY_FILE_RANGE:
                raise
            s.seek(offset)  # no copy_file_range between these files: plain reads, same bytes
            while left:
                chunk = s.read(min(left, 8 << 20))
                if not chunk:
                    raise PipelineError(f"{src}: truncated tensor data") from None
                dst.write(chunk)
                left -= len(chunk)


# copy_file_range's "not between these files" answers: other errors (ENOSPC, EIO) are real and propagate
_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM}
