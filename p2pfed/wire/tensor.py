"""Tensors on the wire: a dtype + shape + digest header, then raw little-endian bytes.

Theory of operation: a tensor is described by a ``TensorHeader`` (big-endian integers):

    offset  size    field
    0       1       tensor format version (1)
    1       1       dtype code (see ``DTYPE_CODES``)
    2       1       number of dimensions D
    3       1       reserved, 0
    4       8*D     dimensions (unsigned)
    4+8*D   32      SHA-256 of the raw bytes

followed, in ``encode_tensor``, by the elements in C order, little-endian. Only plain
numeric dtypes travel (no objects, no pickles), so decoding never runs code. A receiver
checks, in this order and before allocating anything: the header's form, the number of
dimensions and total bytes against its ``Limits`` (OVERSIZED), the dtype and shape it
expects (WRONG_DTYPE, WRONG_SHAPE); then, once the bytes are in, their length (MALFORMED),
the digest (DIGEST_MISMATCH) and, if asked, that floats are finite (NON_FINITE).

Large tensors are sent in chunks (``p2pfed.wire.io.send_tensor``): a TENSOR_HEADER frame
whose payload is a ``ChunkedTensorHeader`` (the header plus chunk size and ACK window),
then TENSOR_CHUNK frames. Pure functions; no I/O.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from p2pfed.errors import DataError, LocalProtocolError, ReasonCode, RemoteProtocolError
from p2pfed.wire.frames import DEFAULT_LIMITS, Limits

TENSOR_FORMAT_VERSION = 1
DIGEST_SIZE = 32

DTYPE_CODES: dict[str, int] = {
    "float16": 1,
    "float32": 2,
    "float64": 3,
    "int8": 4,
    "int16": 5,
    "int32": 6,
    "int64": 7,
    "uint8": 8,
    "uint16": 9,
    "uint32": 10,
    "uint64": 11,
}
"""Wire code of each dtype that may travel. Stable: never renumber."""

_DTYPE_BY_CODE = {code: name for name, code in DTYPE_CODES.items()}
_PREFIX = struct.Struct(">BBBB")
_CHUNK_PLAN = struct.Struct(">II")

Tensor = npt.NDArray[Any]


def _dtype_name(dtype: npt.DTypeLike) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise DataError(f"{dtype!r} is not a numpy dtype") from exc
    if name not in DTYPE_CODES:
        raise DataError(f"dtype {name} cannot be sent; supported: {', '.join(DTYPE_CODES)}")
    return name


@dataclass(frozen=True, slots=True)
class TensorHeader:
    """What a receiver needs to know about a tensor before its bytes arrive."""

    dtype: str
    shape: tuple[int, ...]
    digest: bytes

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_CODES:
            raise LocalProtocolError(f"dtype {self.dtype!r} cannot be sent")
        if len(self.shape) > 255 or any(
            isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < 1 << 64
            for d in self.shape
        ):
            raise LocalProtocolError(f"tensor shape {self.shape!r} cannot be encoded")
        if len(self.digest) != DIGEST_SIZE:
            raise LocalProtocolError(f"tensor digest must be {DIGEST_SIZE} bytes")

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of raw data the header announces."""
        return math.prod(self.shape) * self.itemsize

    def encode(self) -> bytes:
        """The header's wire bytes."""
        return b"".join(
            (
                _PREFIX.pack(TENSOR_FORMAT_VERSION, DTYPE_CODES[self.dtype], len(self.shape), 0),
                b"".join(d.to_bytes(8, "big") for d in self.shape),
                self.digest,
            )
        )

    @classmethod
    def decode_from(
        cls, data: bytes | memoryview, limits: Limits = DEFAULT_LIMITS
    ) -> tuple[TensorHeader, int]:
        """Parse a header at the start of ``data``; returns it and its size in bytes.

        Raises ``RemoteProtocolError``: MALFORMED, UNKNOWN_VERSION, OVERSIZED.
        """
        if len(data) < _PREFIX.size:
            raise RemoteProtocolError(
                ReasonCode.MALFORMED, f"tensor header is cut short ({len(data)} bytes)"
            )
        version, code, ndim, reserved = _PREFIX.unpack_from(data)
        if version != TENSOR_FORMAT_VERSION:
            raise RemoteProtocolError(
                ReasonCode.UNKNOWN_VERSION, f"tensor format version {version} is not supported"
            )
        if code not in _DTYPE_BY_CODE:
            raise RemoteProtocolError(ReasonCode.MALFORMED, f"tensor has unknown dtype code {code}")
        if reserved != 0:
            raise RemoteProtocolError(ReasonCode.MALFORMED, "tensor header reserved byte is set")
        if ndim > limits.max_tensor_ndim:
            raise RemoteProtocolError(
                ReasonCode.OVERSIZED,
                f"tensor has {ndim} dimensions; the limit is {limits.max_tensor_ndim}",
            )
        size = _PREFIX.size + 8 * ndim + DIGEST_SIZE
        if len(data) < size:
            raise RemoteProtocolError(
                ReasonCode.MALFORMED, f"tensor header is cut short ({len(data)} of {size} bytes)"
            )
        shape = tuple(
            int.from_bytes(data[_PREFIX.size + 8 * i : _PREFIX.size + 8 * i + 8], "big")
            for i in range(ndim)
        )
        header = cls(_DTYPE_BY_CODE[code], shape, bytes(data[size - DIGEST_SIZE : size]))
        # Empty dimensions count as 1 here, so (0, 2**60) is refused too: numpy cannot
        # even describe such a shape, and no honest peer sends one.
        if math.prod(max(d, 1) for d in shape) * header.itemsize > limits.max_tensor_bytes:
            raise RemoteProtocolError(
                ReasonCode.OVERSIZED,
                f"tensor of shape {shape} and dtype {header.dtype} is {header.nbytes} bytes; "
                f"the limit is {limits.max_tensor_bytes}",
            )
        return header, size

    def check_expected(
        self,
        expected_shape: tuple[int, ...] | None,
        expected_dtype: npt.DTypeLike | None,
    ) -> None:
        """Raise ``RemoteProtocolError`` (WRONG_DTYPE / WRONG_SHAPE) on a mismatch."""
        if expected_dtype is not None:
            want = np.dtype(expected_dtype).name
            if self.dtype != want:
                raise RemoteProtocolError(
                    ReasonCode.WRONG_DTYPE, f"tensor has dtype {self.dtype}; expected {want}"
                )
        if expected_shape is not None and self.shape != tuple(expected_shape):
            raise RemoteProtocolError(
                ReasonCode.WRONG_SHAPE,
                f"tensor has shape {self.shape}; expected {tuple(expected_shape)}",
            )


@dataclass(frozen=True, slots=True)
class ChunkedTensorHeader:
    """Payload of a TENSOR_HEADER frame: the tensor header plus how the bytes are chunked."""

    header: TensorHeader
    chunk_bytes: int
    window: int

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_bytes < 1 << 32:
            raise LocalProtocolError(f"chunk size {self.chunk_bytes} must be in 1..2**32-1")
        if not 1 <= self.window < 1 << 32:
            raise LocalProtocolError(f"ACK window {self.window} must be in 1..2**32-1")

    @property
    def n_chunks(self) -> int:
        """How many TENSOR_CHUNK frames follow."""
        return -(-self.header.nbytes // self.chunk_bytes)

    def chunk_size(self, index: int) -> int:
        """Bytes in chunk ``index`` (every chunk is full but the last)."""
        return min(self.chunk_bytes, self.header.nbytes - index * self.chunk_bytes)

    def encode(self) -> bytes:
        """The TENSOR_HEADER payload."""
        return self.header.encode() + _CHUNK_PLAN.pack(self.chunk_bytes, self.window)

    @classmethod
    def decode(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> ChunkedTensorHeader:
        """Parse a TENSOR_HEADER payload, checking it against ``limits``."""
        header, size = TensorHeader.decode_from(data, limits)
        if len(data) != size + _CHUNK_PLAN.size:
            raise RemoteProtocolError(
                ReasonCode.MALFORMED,
                f"tensor header frame payload is {len(data)} bytes; expected "
                f"{size + _CHUNK_PLAN.size}",
            )
        chunk_bytes, window = _CHUNK_PLAN.unpack_from(data, size)
        if not 1 <= chunk_bytes <= limits.max_payload:
            raise RemoteProtocolError(
                ReasonCode.OVERSIZED if chunk_bytes else ReasonCode.MALFORMED,
                f"tensor chunk size {chunk_bytes} is outside 1..{limits.max_payload}",
            )
        if not 1 <= window <= limits.max_ack_window:
            raise RemoteProtocolError(
                ReasonCode.MALFORMED,
                f"tensor ACK window {window} is outside 1..{limits.max_ack_window}",
            )
        return cls(header, chunk_bytes, window)


def tensor_view(array: Tensor) -> tuple[TensorHeader, memoryview]:
    """The header and a flat byte view of ``array``'s little-endian C-order elements.

    No copy when the array is already contiguous and little-endian. Raises ``DataError``
    for an unsupported dtype or a non-array.
    """
    if not isinstance(array, np.ndarray):
        raise DataError(f"expected a numpy array, not {type(array).__name__}")
    name = _dtype_name(array.dtype)
    if array.ndim > 255:
        raise DataError(f"tensor has {array.ndim} dimensions; at most 255 can be sent")
    little = np.ascontiguousarray(array, dtype=np.dtype(name).newbyteorder("<"))
    raw = little.reshape(-1).view(np.uint8).data
    header = TensorHeader(name, tuple(int(d) for d in array.shape), hashlib.sha256(raw).digest())
    return header, raw


def tensor_bytes(array: Tensor) -> tuple[TensorHeader, bytes]:
    """The header and raw little-endian C-order bytes of ``array`` (see ``tensor_view``)."""
    header, raw = tensor_view(array)
    return header, bytes(raw)


def encode_tensor(array: Tensor) -> bytes:
    """One payload holding ``array``: header, then its raw little-endian bytes."""
    header, raw = tensor_view(array)
    return b"".join((header.encode(), raw))


def check_finite(array: Tensor) -> None:
    """Raise ``RemoteProtocolError(NON_FINITE)`` if a float tensor holds NaN or infinity."""
    if array.dtype.kind == "f" and not bool(np.isfinite(array).all()):
        raise RemoteProtocolError(ReasonCode.NON_FINITE, "tensor holds NaN or infinite values")


def array_from_raw(header: TensorHeader, raw: bytes | bytearray | npt.NDArray[np.uint8]) -> Tensor:
    """Turn verified raw bytes into an array in native byte order (writable if ``raw`` is)."""
    little = np.frombuffer(raw, dtype=np.dtype(header.dtype).newbyteorder("<"))
    native = little if little.dtype.isnative else little.astype(np.dtype(header.dtype))
    return native.reshape(header.shape)


def decode_tensor(
    payload: bytes,
    expected_shape: tuple[int, ...] | None = None,
    expected_dtype: npt.DTypeLike | None = None,
    *,
    finite: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> Tensor:
    """The array held in ``payload`` (as made by ``encode_tensor``), as a writable copy.

    Raises ``RemoteProtocolError`` with MALFORMED, UNKNOWN_VERSION, OVERSIZED, WRONG_DTYPE,
    WRONG_SHAPE, DIGEST_MISMATCH or NON_FINITE (the last only when ``finite``).
    """
    header, size = TensorHeader.decode_from(payload, limits)
    header.check_expected(expected_shape, expected_dtype)
    if len(payload) - size != header.nbytes:
        raise RemoteProtocolError(
            ReasonCode.MALFORMED,
            f"tensor of shape {header.shape} and dtype {header.dtype} needs {header.nbytes} "
            f"bytes; the payload carries {len(payload) - size}",
        )
    raw = bytearray(memoryview(payload)[size:])
    if hashlib.sha256(raw).digest() != header.digest:
        raise RemoteProtocolError(
            ReasonCode.DIGEST_MISMATCH, "tensor bytes do not match their SHA-256 digest"
        )
    array = array_from_raw(header, raw)
    if finite:
        check_finite(array)
    return array
