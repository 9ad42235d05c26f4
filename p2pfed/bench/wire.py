"""``p2pfed bench wire``: what the wire codec costs per byte, against memcpy and SHA-256.

Theory of operation: for each size, in one run and one process, time (best of
``--repeat``): the two baselines a tensor transfer cannot beat — a plain copy of the bytes
and one SHA-256 over them — then ``encode_tensor``, ``decode_tensor``, ``FrameDecoder`` over
1 MiB frames fed at once, and a whole ``send_tensor``/``receive_tensor`` exchange over the
in-memory transport (so no network or crypto, only the codec, ACKs and trio). The chunked
exchange hashes on both sides, so its ceiling is about half the SHA-256 rate. MB/s are
10^6 bytes per second. Nothing is asserted; the load average is reported because the
machine is shared.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from p2pfed.bench._timing import best_of
from p2pfed.errors import ConfigError, DataError
from p2pfed.output import print_json
from p2pfed.settings import comma_list

# torch, trio, libp2p and the modules that load them are imported inside functions: every
# benchmark module is imported when `p2pfed --help` builds its parser.
NAME = "wire"
HELP = "Throughput of the wire codec (tensor encode/decode, frame decoder, chunked exchange)."

DEFAULT_SIZES = (16, 64)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the options and set ``func``."""
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=list(DEFAULT_SIZES),
        help="tensor sizes in MiB, comma-separated (default: %(default)s)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; best is kept (3)")
    parser.add_argument("--json", action="store_true", help="accepted for symmetry; JSON only")
    parser.set_defaults(func=run)


_sizes = comma_list(int, "a positive whole number of MiB", lambda n: n >= 1)


def _best(repeat: int, nbytes: int, case: Callable[[], object]) -> float:
    """MB/s of the fastest of ``repeat`` calls of ``case`` over ``nbytes`` bytes."""
    return round(nbytes / best_of(repeat, case).seconds / 1e6, 1)


def _exchange(array: Any) -> None:
    import trio
    import trio.testing

    from p2pfed.transport import MemoryNetwork, Stream
    from p2pfed.wire import receive_tensor, send_tensor

    received: list[Any] = []

    async def handler(stream: Stream) -> None:
        received.append(await receive_tensor(stream, local_peer="b"))

    async def main() -> None:
        net = MemoryNetwork()
        async with net.open("a") as a, net.open("b") as b:
            b.serve("/bench", handler)
            stream = await a.open_stream("b", "/bench")
            await send_tensor(stream, array, consortium="bench", round=0, sender="a")
            await trio.testing.wait_all_tasks_blocked()
            await stream.aclose()

    trio.run(main)
    if not (received and np.array_equal(received[0], array)):
        raise DataError("the tensor did not arrive intact; the benchmark is void")


def _case(size_mb: int, repeat: int) -> dict[str, float]:
    from p2pfed.wire import (
        Frame,
        FrameDecoder,
        FrameType,
        decode_tensor,
        encode_frame,
        encode_tensor,
    )

    nbytes = size_mb << 20
    array = np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)
    raw = array.tobytes()
    payload = encode_tensor(array)
    one_frame = encode_frame(Frame(FrameType.TENSOR_CHUNK, "bench", 0, "a", 0, bytes(1 << 20)))
    frames = one_frame * size_mb

    def decode_frames() -> None:
        decoder = FrameDecoder()
        decoder.feed(frames)
        while decoder.next_frame() is not None:
            pass

    return {
        "size_mb": size_mb,
        "memcpy_mb_s": _best(repeat, nbytes, lambda: bytearray(raw)),
        "sha256_mb_s": _best(repeat, nbytes, lambda: hashlib.sha256(raw).digest()),
        "encode_tensor_mb_s": _best(repeat, nbytes, lambda: encode_tensor(array)),
        "decode_tensor_mb_s": _best(repeat, nbytes, lambda: decode_tensor(payload)),
        "frame_decoder_mb_s": _best(repeat, len(frames), decode_frames),
        "memory_exchange_mb_s": _best(repeat, nbytes, lambda: _exchange(array)),
    }


def run(args: argparse.Namespace) -> int:
    """Run every case for every size and print the JSON document."""
    if args.repeat < 1:
        raise ConfigError(f"--repeat must be at least 1, not {args.repeat}")
    cases = [_case(size_mb, args.repeat) for size_mb in args.sizes]
    print_json(
        {
            "bench": "wire",
            "repeat": args.repeat,
            "load_average_1m": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
            "cases": cases,
        }
    )
    return 0
