"""One of the bench's destinations, in a process of its own: `python -m bench._delivery_receiver
<mode>`.

`healthy` answers 200 and keeps, per delivery, the time from its queueing (`t` in the body, by
the wall clock this machine shares) to its arrival: `GET /stats` returns the count and
latencies, `GET /count` the count alone (what the bench polls: the latencies of a drain are
20,000 numbers), `POST /reset` clears them. The neighbour's modes: `500` answers 500 to
everything, `timeout` never answers in time, `200` answers 200 (a working neighbour); its
`GET /count` is how many requests reached it. Each
destination has a process, as each has a host of its own in a deployment: a neighbour's
connections, cancelled handlers and answers are not work of the healthy destination's
receiver, which is the instrument. Prints `port <port>` once listening.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time

from aiohttp import web


async def main(mode: str) -> None:
    latencies: list[float] = []
    reached = 0  # the neighbour's requests: what its circuit let through

    async def healthy(request: web.Request) -> web.Response:
        body = await request.json()
        latencies.append(time.time() - body["t"])
        return web.Response(status=200)

    async def neighbour(request: web.Request) -> web.Response:
        nonlocal reached
        reached += 1
        await request.read()
        if mode == "timeout":
            await asyncio.sleep(3600)
        return web.Response(status=200 if mode == "200" else 500)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"count": len(latencies), "latencies": latencies})

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"count": len(latencies) if mode == "healthy" else reached})

    async def reset(request: web.Request) -> web.Response:
        latencies.clear()
        return web.Response(status=204)

    app = web.Application()
    if mode == "healthy":
        app.add_routes(
            [web.post("/hook", healthy), web.get("/stats", stats), web.get("/count", count), web.post("/reset", reset)]
        )
    else:
        app.add_routes([web.post("/hook", neighbour), web.get("/count", count)])
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    gc.freeze()  # the healthy receiver is the instrument: a full collection of its heap must not stall it
    print(f"port {runner.addresses[0][1]}", flush=True)  # the port the OS picked
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
