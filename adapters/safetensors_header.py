"""Read and check a safetensors file's header without loading tensors (no torch, no pickle)."""

from __future__ import annotations

import itertools
import json
import struct
from dataclasses import dataclass

from adapters.errors import AdapterRefused

# A header lists names, dtypes, shapes and offsets; even a 7B model's stays far below this.
MAX_HEADER_BYTES = 16 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]


def header_length(prefix: bytes, file_size: int, file_name: str) -> int:
    """The header's byte length from the file's first 8 bytes, checked against the file size."""
    if len(prefix) < 8:
        raise AdapterRefused("safetensors", f"{file_name} is too short to be safetensors")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_HEADER_BYTES or 8 + length > file_size:
        raise AdapterRefused("safetensors", f"{file_name} has an impossible header length")
    return int(length)


def parse_header(header: bytes, data_size: int, file_name: str) -> list[TensorInfo]:
    """The tensors a header describes; refuses overlapping, out-of-range or ill-typed entries."""
    try:
        entries = json.loads(header)
    except ValueError:
        raise AdapterRefused("safetensors", f"{file_name} has a header that is not JSON") from None
    if not isinstance(entries, dict):
        raise AdapterRefused("safetensors", f"{file_name} has a header that is not an object")
    tensors: list[TensorInfo] = []
    spans: list[tuple[int, int]] = []
    for name, entry in entries.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            expected = _DTYPE_BYTES[dtype]
            for dim in shape:
                expected *= int(dim)
        except (KeyError, TypeError, ValueError):
            raise AdapterRefused(
                "safetensors", f"{file_name}: tensor {name!r} has a malformed entry"
            ) from None
        if not (0 <= start <= end <= data_size) or end - start != expected:
            raise AdapterRefused(
                "safetensors", f"{file_name}: tensor {name!r} lies outside the file's data"
            )
        spans.append((start, end))
        tensors.append(TensorInfo(name=name, dtype=dtype, shape=tuple(int(d) for d in shape)))
    spans.sort()
    for (_, previous_end), (start, _) in itertools.pairwise(spans):
        if start < previous_end:
            raise AdapterRefused("safetensors", f"{file_name}: tensors overlap")
    return tensors


def read_tensor_infos(data: bytes, file_name: str) -> list[TensorInfo]:
    """The tensors of a whole safetensors file held in memory."""
    length = header_length(data[:8], len(data), file_name)
    return parse_header(data[8 : 8 + length], len(data) - 8 - length, file_name)
