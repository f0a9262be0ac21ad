"""The machine's limit for reads: a bare ASGI app under the same uvicorn (uvloop + httptools) as `ims serve`.

`GET /hello` answers a small JSON body, any other path the bytes of the file named by BENCH_STATIC_BODY (the
list of 10,000 images as ims sent it), both as fixed bytes: what is left is the HTTP server and the socket.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

HELLO = b'{"hello":"world"}'
_static = os.environ.get("BENCH_STATIC_BODY")
STATIC = Path(_static).read_bytes() if _static else HELLO


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = HELLO if scope["path"] == "/hello" else STATIC
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
