"""A TCP relay a test can cut or stall, between a client and a real server (a replica's NATS
connection lost and refused until restored; or what the server sends held back, as on a stalled
network or behind a busy event loop, while the server goes on)."""

from __future__ import annotations

import asyncio


class Link:
    """A TCP relay between a replica and the nats-server, which the test can cut: the replica's
    connection drops, and reconnecting is refused until `restore`; or `hold` what the server
    sends until `release`."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("nats://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.up = True
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, held: bool) -> None:
            try:
                while data := await source.read(65536):
                    if held:
                        await self.flowing.wait()
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    def cut(self) -> None:
        self.up = False
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    def restore(self) -> None:
        self.up = True

    def hold(self) -> None:
        self.flowing.clear()

    def release(self) -> None:
        self.flowing.set()

    async def close(self) -> None:
        self.release()
        self.cut()
        self._server.close()
