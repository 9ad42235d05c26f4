"""The wire codec: versioned, size-capped frames and chunked tensors with digests.

``frames`` and ``tensor`` are sans-I/O (bytes in, frames or arrays out); ``io`` holds the
thin trio drivers over a ``p2pfed.transport.Stream``. See docs/wire.md for the format.
"""

from p2pfed.wire.frames import (
    DEFAULT_LIMITS,
    HEADER_SIZE,
    MAGIC,
    WIRE_VERSION,
    Frame,
    FrameDecoder,
    FrameType,
    Limits,
    decode_ack,
    decode_reject,
    encode_ack,
    encode_frame,
    encode_reject,
)
from p2pfed.wire.io import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_TIMEOUT,
    DEFAULT_WINDOW,
    ReadTimeout,
    RejectedByPeer,
    StreamEnded,
    read_frame,
    receive_tensor,
    send_tensor,
    write_frame,
)
from p2pfed.wire.tensor import (
    DTYPE_CODES,
    ChunkedTensorHeader,
    Tensor,
    TensorHeader,
    decode_tensor,
    encode_tensor,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WINDOW",
    "DTYPE_CODES",
    "HEADER_SIZE",
    "MAGIC",
    "WIRE_VERSION",
    "ChunkedTensorHeader",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "Limits",
    "ReadTimeout",
    "RejectedByPeer",
    "StreamEnded",
    "Tensor",
    "TensorHeader",
    "decode_ack",
    "decode_reject",
    "decode_tensor",
    "encode_ack",
    "encode_frame",
    "encode_reject",
    "encode_tensor",
    "read_frame",
    "receive_tensor",
    "send_tensor",
    "write_frame",
]
