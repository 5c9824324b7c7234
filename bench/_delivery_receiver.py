"""The bench's destinations, in a process of their own: `python -m bench._delivery_receiver`.

Port A answers 200 and keeps, per delivery, the time from its queueing (`t` in the body, by
the wall clock this machine shares) to its arrival; port B answers 500 to everything, or never
answers in time (`timeout` mode), or answers 200 as A does (`200` mode: a working neighbour). `GET /stats` on port A returns the count and latencies,
`GET /count` the count alone (what the bench polls: the latencies of a drain are 20,000
numbers); `POST /reset` clears them. Prints `ports A B` once listening.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time

from aiohttp import web


async def main(failing_mode: str) -> None:
    latencies: list[float] = []

    async def healthy(request: web.Request) -> web.Response:
        body = await request.json()
        latencies.append(time.time() - body["t"])
        return web.Response(status=200)

    async def failing(request: web.Request) -> web.Response:
        await request.read()
        if failing_mode == "timeout":
            await asyncio.sleep(3600)
        return web.Response(status=200 if failing_mode == "200" else 500)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"count": len(latencies), "latencies": latencies})

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"count": len(latencies)})

    async def reset(request: web.Request) -> web.Response:
        latencies.clear()
        return web.Response(status=204)

    healthy_app = web.Application()
    healthy_app.add_routes(
        [web.post("/hook", healthy), web.get("/stats", stats), web.get("/count", count), web.post("/reset", reset)]
    )
    failing_app = web.Application()
    failing_app.add_routes([web.post("/hook", failing)])
    ports = []
    for app in (healthy_app, failing_app):
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        ports.append(runner.addresses[0][1])  # the port the OS picked
    gc.freeze()  # the receiver is the instrument: a full collection of its heap must not stall it
    print(f"ports {ports[0]} {ports[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "500"))
