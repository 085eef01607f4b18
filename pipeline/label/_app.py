"""The labelling app on the web: a Starlette application over a :class:`LabelSession`, served by
uvicorn on 127.0.0.1 only.

Every request must carry the session's token (``?token=`` or an ``X-Token`` header): without it,
403, POSTs too, so another site open in the browser cannot read or change anything. Only the
images of the code set are served, looked up by their relative path (no path is ever joined to
the folder unless it is one of them): ``..``, ``%2e%2e`` or absolute paths are 404. The Host header
must name this machine (a page of another site resolving its name to 127.0.0.1 is refused).
"""
from __future__ import annotations

import logging
import secrets
import socket
from urllib.parse import parse_qs

from pipeline.errors import UserError
from pipeline.label._pages import render
from pipeline.label._session import LabelSession

logger = logging.getLogger(__name__)


def new_token() -> str:
    return secrets.token_urlsafe(24)  # [A-Za-z0-9_-]


class _TokenGate:
    """ASGI middleware: 403 unless the request carries the token."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        header = dict(scope.get("headers") or []).get(b"x-token", b"").decode("latin-1")
        if not (secrets.compare_digest(given.encode(), self.token.encode())
                or secrets.compare_digest(header.encode(), self.token.encode())):
            from starlette.responses import PlainTextResponse
            return await PlainTextResponse("forbidden: open the address the label command printed", 403)(
                scope, receive, send)
        return await self.app(scope, receive, send)


def make_app(session: LabelSession, token: str):
    """The Starlette application of ``session``, guarded by ``token``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
    from starlette.routing import Route

    def page(name):
        return lambda request: HTMLResponse(render(name), headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'unsafe-inline'; "
                                       "script-src 'unsafe-inline'", "Cache-Control": "no-store"})

    async def body(request) -> dict:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise UserError("send JSON (Content-Type: application/json)")
        try:
            data = await request.json()
        except ValueError:
            raise UserError("the request body is not JSON") from None
        if not isinstance(data, dict):
            raise UserError("the request body is not a JSON object")
        return data

    def handled(fn):
        async def endpoint(request):
            try:
                return await fn(request)
            except UserError as exc:
                return JSONResponse({"error": str(exc)}, 400)
        return endpoint

    def run(fn, *args):
        from starlette.concurrency import run_in_threadpool
        return run_in_threadpool(fn, *args)

    @handled
    async def next_batch(request):
        n = request.query_params.get("n")
        if n is not None and (not n.isdigit() or not 1 <= int(n) <= 200):
            raise UserError("n: a whole number from 1 to 200")
        return JSONResponse(await run(session.next_batch, int(n) if n else None))

    @handled
    async def decide(request):
        data = await body(request)
        path, labels, exclude = data.get("path"), data.get("labels") or [], bool(data.get("exclude", False))
        if not isinstance(path, str) or not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise UserError("a decision is {path: text, labels: [text], exclude: true/false}")
        d = await run(session.decide, path, labels, exclude)
        return JSONResponse({"id": d.id, "path": d.path, "labels": list(d.after), "excluded": d.excluded})

    @handled
    async def undo(request):
        data = await body(request)
        wanted = data.get("id")
        if wanted is not None and (isinstance(wanted, bool) or not isinstance(wanted, int)):
            raise UserError("id: the number of a decision")
        d = await run(session.undo, wanted)
        return JSONResponse({"undone": None if d is None else d.id})

    @handled
    async def skip(request):
        data = await body(request)
        if not isinstance(data.get("path"), str):
            raise UserError("path: the image to skip")
        await run(session.skip, data["path"])
        return JSONResponse({"skipped": data["path"]})

    @handled
    async def add_class(request):
        data = await body(request)
        return JSONResponse({"class": await run(session.add_class, data.get("name"))})

    @handled
    async def progress(request):
        return JSONResponse(await run(session.progress))

    @handled
    async def review(request):
        return JSONResponse(await run(session.review))

    async def image(request):
        rel = request.path_params["path"]
        if rel not in session.where:  # only the images of the code set, by their own relative path
            return PlainTextResponse("not found", 404)
        return FileResponse(session.root / rel, headers={"Cache-Control": "private, max-age=3600"})

    async def home(request):
        return RedirectResponse(f"/label?token={token}")

    routes = [Route("/", home), Route("/label", page("label")), Route("/review", page("review")),
              Route("/progress", page("progress")), Route("/api/next", next_batch),
              Route("/api/decide", decide, methods=["POST"]), Route("/api/undo", undo, methods=["POST"]),
              Route("/api/skip", skip, methods=["POST"]), Route("/api/class", add_class, methods=["POST"]),
              Route("/api/progress", progress), Route("/api/review", review),
              Route("/image/{path:path}", image)]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"]),
                  Middleware(_TokenGate, token=token)]
    return Starlette(routes=routes, middleware=middleware)


def listen(port: int = 0) -> socket.socket:
    """A socket listening on 127.0.0.1 only (``port`` 0: a free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise UserError(f"--port {port}: cannot listen there ({exc.strerror})") from None
    sock.listen(64)
    return sock


def serve(app, sock: socket.socket) -> None:
    """Serve ``app`` on the listening ``sock`` until Ctrl-C or SIGTERM."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
