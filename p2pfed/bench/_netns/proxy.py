"""A userspace TCP proxy that adds one-way delay and caps bandwidth, per direction.

Theory of operation: the kernel here has no netem, so WAN-like links are made in user
space. Each accepted connection is piped to ``--to``; every chunk read is stamped with its
arrival time and written out no earlier than ``delay`` seconds later, and each direction
sends at most ``rate`` bytes per second (a pacing clock that never runs ahead of
``bytes sent / rate``). RTT through the proxy is therefore at least ``2 × delay``.
Run: ``python proxy.py --listen HOST:PORT --to HOST:PORT --delay 0.01 --rate 12.5e6``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

CHUNK = 64 * 1024


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, rate: float
) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump_in() -> None:
        while True:
            data = await reader.read(CHUNK)
            queue.put_nowait((time.monotonic(), data))
            if not data:
                return

    async def pump_out() -> None:
        paced = time.monotonic()
        while True:
            stamp, data = await queue.get()
            wait = stamp + delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.write_eof() if writer.can_write_eof() else None
                return
            # Bandwidth: this chunk may leave once the previous ones had their time.
            paced = max(paced, time.monotonic()) + len(data) / rate
            writer.write(data)
            await writer.drain()
            ahead = paced - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)

    tasks = [asyncio.ensure_future(pump_in()), asyncio.ensure_future(pump_out())]
    try:
        await asyncio.gather(*tasks)
    except (ConnectionError, OSError):
        pass
    finally:
        for task in tasks:
            task.cancel()


def _split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _serve(listen: str, to: str, delay: float, rate: float) -> None:
    to_host, to_port = _split(to)

    async def on_client(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection(to_host, to_port)
        except OSError:
            c_writer.close()
            return
        await asyncio.gather(
            _pipe(c_reader, u_writer, delay, rate),
            _pipe(u_reader, c_writer, delay, rate),
            return_exceptions=True,
        )
        for w in (c_writer, u_writer):
            w.close()

    host, port = _split(listen)
    server = await asyncio.start_server(on_client, host, port, reuse_address=True)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--delay", type=float, default=0.01, help="one-way seconds")
    parser.add_argument("--rate", type=float, default=12.5e6, help="bytes/s per direction")
    args = parser.parse_args()
    asyncio.run(_serve(args.listen, args.to, args.delay, args.rate))


if __name__ == "__main__":
    main()
