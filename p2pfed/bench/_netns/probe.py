"""Tiny TCP probes run inside namespaces: an echo server and a dialler that reports JSON.

``python probe.py serve HOST PORT`` echoes every byte back; ``python probe.py dial HOST PORT
[--timeout S] [--bytes N]`` connects, times one 1-byte round trip and (with ``--bytes``) an
echo of N bytes, and prints ``{"ok": …, "rtt": …, "seconds": …, "error": …}``.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time


def serve(host: str, port: int) -> None:
    server = socket.create_server((host, port), reuse_port=True)
    print("listening", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def dial(host: str, port: int, timeout: float, size: int) -> dict[str, object]:
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            start = time.monotonic()
            conn.sendall(b"x")
            if conn.recv(1) != b"x":
                return {"ok": False, "error": "no echo"}
            rtt = time.monotonic() - start
            seconds = None
            if size:
                start = time.monotonic()
                sender = threading.Thread(target=conn.sendall, args=(b"y" * size,))
                sender.start()
                got = 0
                while got < size:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        return {"ok": False, "error": f"echo ended after {got} bytes"}
                    got += len(chunk)
                sender.join()
                seconds = time.monotonic() - start
            return {"ok": True, "rtt": rtt, "seconds": seconds}
    except OSError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["serve", "dial"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--bytes", type=int, default=0)
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args.host, args.port)
    else:
        print(json.dumps(dial(args.host, args.port, args.timeout, args.bytes)), flush=True)


if __name__ == "__main__":
    main()
