"""The web viewer at `/ui`: static files shipped inside the package (no CDN, no Node toolchain), served
with a Content-Security-Policy that allows no inline script and no other origin."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UI_FOLDER = Path(__file__).parent / "ui"
HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


class ViewerHeaders:
    """ASGI middleware: the security headers on every response under /ui."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/ui"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  *((k.encode(), v.encode()) for k, v in HEADERS.items())]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount_viewer(app: FastAPI) -> None:
    app.add_middleware(ViewerHeaders)

    @app.get("/ui", include_in_schema=False)
    def viewer_root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui", StaticFiles(directory=UI_FOLDER, html=True), name="ui")
