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


COOKIE = "cnn_codes_label"
SAME_SITE_FETCHES = ("same-origin", "none")  # Sec-Fetch-Site of the app's own pages, and of an address typed in


class _TokenGate:
    """ASGI middleware: 403 unless the request carries the token (``?token=``, the ``X-Token``
    header or the app's cookie) and comes from none other than the app's own pages (an
    ``Origin`` of another site, or a ``Sec-Fetch-Site`` other than same-origin or none, is
    refused even with the token: a page of another site cannot use a tab's cookie)."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.responses import PlainTextResponse

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        origin, fetch_site = headers.get("origin"), headers.get("sec-fetch-site")
        host = headers.get("host", "")
        if (origin is not None and origin not in (f"http://{host}",)) or (
                fetch_site is not None and fetch_site not in SAME_SITE_FETCHES):
            return await PlainTextResponse("forbidden: a request from another site", 403)(scope, receive, send)
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        cookie = _cookie(headers.get("cookie", ""))
        if not any(secrets.compare_digest(x.encode(), self.token.encode())
                   for x in (given, headers.get("x-token", ""), cookie)):
            return await PlainTextResponse("forbidden: open the address the label command printed", 403)(
                scope, receive, send)
        return await self.app(scope, receive, send)


def _cookie(header: str) -> str:
    from http.cookies import CookieError, SimpleCookie

    try:
        jar = SimpleCookie(header)
    except CookieError:
        return ""
    return jar[COOKIE].value if COOKIE in jar else ""


def stored_token(folder, renew: bool = False) -> str:
    """The token of a data folder's labelling app, kept in ``folder/label-token`` (owner-only
    permissions) so that it survives restarts and an open tab goes on; ``renew``: a new one."""
    import os
    from pathlib import Path

    path = Path(folder) / "label-token"
    if not renew and path.is_file():
        token = path.read_text(encoding="ascii", errors="replace").strip()
        if len(token) >= 32 and all(c.isalnum() or c in "-_" for c in token):
            return token
    token = new_token()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".label-token.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)
    return token


def make_app(session: LabelSession, token: str):
    """The Starlette application of ``session``, guarded by ``token``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
    from starlette.routing import Route

    def page(name):
        def respond(request):
            out = HTMLResponse(render(name), headers={
                "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'unsafe-inline'; "
                                           "script-src 'unsafe-inline'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
            # the token moves to a cookie of this site only (the page then drops it from the address)
            out.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            return out
        return respond

    def tab_of(request) -> str:
        tab = request.headers.get("x-tab", "")
        return tab if len(tab) <= 64 and all(c.isalnum() or c in "-_" for c in tab) else ""

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
        return JSONResponse(await run(session.next_batch, int(n) if n else None, (), tab_of(request)))

    @handled
    async def decide(request):
        data = await body(request)
        path, labels, exclude = data.get("path"), data.get("labels") or [], bool(data.get("exclude", False))
        if not isinstance(path, str) or not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise UserError("a decision is {path: text, labels: [text], exclude: true/false}")
        d = await run(session.decide, path, labels, exclude, tab_of(request), data.get("reviewed") is True)
        return JSONResponse({"id": d.id, "path": d.path, "labels": list(d.after), "excluded": d.excluded,
                             "version": session.version})

    @handled
    async def group(request):
        n = request.query_params.get("n")
        if n is not None and (not n.isdigit() or not 1 <= int(n) <= 200):
            raise UserError("n: a whole number from 1 to 200")
        return JSONResponse(await run(session.next_group, int(n) if n else None, tab_of(request)))

    @handled
    async def decide_group(request):
        data = await body(request)
        paths, labels = data.get("paths"), data.get("labels") or []
        if (not isinstance(paths, list) or not paths or len(paths) > 200 or not all(isinstance(p, str) for p in paths)
                or not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
            raise UserError("a group's decision is {paths: [text], labels: [text]}")
        ds = await run(session.decide_group, paths, labels, tab_of(request))
        return JSONResponse({"ids": [d.id for d in ds], "labels": list(ds[0].after), "version": session.version})

    @handled
    async def undo(request):
        data = await body(request)
        wanted = data.get("id")
        if wanted is not None and (isinstance(wanted, bool) or not isinstance(wanted, int)):
            raise UserError("id: the number of a decision")
        # without an id: the last decision of the tab asking (another tab's stay)
        d = await run(session.undo, wanted, tab_of(request) if wanted is None else None)
        return JSONResponse({"undone": None if d is None else d.id, "path": None if d is None else d.path,
                             "labels": None if d is None else list(d.before), "version": session.version})

    @handled
    async def state(request):
        since = request.query_params.get("since", "0")
        if not since.isdigit():
            raise UserError("since: the version a page last saw")
        return JSONResponse(await run(session.state, int(since)))

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
        out = RedirectResponse("/label")
        out.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return out

    routes = [Route("/", home), Route("/label", page("label")), Route("/review", page("review")),
              Route("/progress", page("progress")), Route("/api/next", next_batch),
              Route("/api/decide", decide, methods=["POST"]), Route("/api/undo", undo, methods=["POST"]),
              Route("/api/group", group), Route("/api/decide-group", decide_group, methods=["POST"]),
              Route("/api/skip", skip, methods=["POST"]), Route("/api/class", add_class, methods=["POST"]),
              Route("/api/progress", progress), Route("/api/review", review), Route("/api/state", state),
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
