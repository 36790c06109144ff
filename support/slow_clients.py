"""Clients that hold server resources without using them: idle ext_proc streams and stalled request bodies.

Used by the end-to-end tests and by the bench (bench/capacity.py), which hold them open while normal
load runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc


@contextlib.contextmanager
def idle_streams(port: int, count: int) -> Iterator[None]:
    """`count` ext_proc streams opened straight at the server that send nothing (a client thread each
    would be the client's limit, not the server's, so they share one event loop)."""
    ready = threading.Event()
    stop: asyncio.Event | None = None
    loop = asyncio.new_event_loop()

    async def hold() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ep_grpc.ExternalProcessorStub(channel)
            calls = [stub.Process() for _ in range(count)]
            # Every stream has been sent; the server may take a moment more to start its handlers.
            await asyncio.gather(*(call.wait_for_connection() for call in calls))
            ready.set()
            await stop.wait()
            for call in calls:
                call.cancel()
            # Let each call see its cancellation before the loop closes under it.
            await asyncio.gather(*(call.code() for call in calls), return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(hold(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "the idle streams did not open"
        yield
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


@contextlib.contextmanager
def stalled_bodies(port: int, count: int, prefix: str = "/stalled") -> Iterator[None]:
    """`count` clients that announce a 1 MB request body to paths under `prefix`, send 10 bytes of it,
    and wait."""
    sockets = []
    try:
        for index in range(count):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets.append(client)
            head = f"POST {prefix}/{index} HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n\r\n"
            client.sendall(head.encode() + b"0123456789")
        yield
    finally:
        for client in sockets:
            client.close()
