"""The ceiling for bench/intake: an aiohttp handler that only parses the JSON and answers 200."""

from __future__ import annotations

import json
import sys

from aiohttp import web


async def receive(request: web.Request) -> web.Response:
    json.loads(await request.read())
    return web.json_response({"status": "accepted"})


def main() -> None:
    app = web.Application()
    app.router.add_post("/hooks/alertmanager", receive)
    app.router.add_get("/-/ready", lambda _request: web.Response(text="ok"))  # type: ignore[arg-type,return-value]
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
