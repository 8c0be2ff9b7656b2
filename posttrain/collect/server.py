"""The labelling server: a Starlette app serving the page (``static/``) and the JSON API it uses.

API (scripts may use it too; every POST body is JSON and must be sent as ``application/json``):
  GET  /api/state?annotator=NAME        {"mode", "k", "progress"}
  GET  /api/next?annotator=NAME         {"item": {item_id, mode, prompt, candidates: [{id, text}]} | null,
                                         "progress": {done, left, total, labels}}
  POST /api/label {annotator, item_id, value}   commit one label (see ``db.check_value``)
  POST /api/skip  {annotator, item_id}          pass on the current item
  POST /api/undo  {annotator}                   take back the latest label or skip: {"undone": id | null}
  GET  /api/summary                     counts and agreement (as in ``export.summarize``)
  GET  /api/export/{rankings|pairs|unpaired}[?pairs=all|adjacent]   the rows as JSONL
Errors are ``{"error": message}`` with status 400 (bad input), 401 (token), 403 (host), 415.

Access rules:
- Without a token the server must be bound to a loopback address (``check_bind``) and answers only
  requests whose Host is a loopback name, so a web page elsewhere cannot reach it through DNS
  rebinding. With a token every request must carry it: ``Authorization: Bearer TOKEN``, the
  ``X-Posttrain-Token`` header, or the cookie set when the page is opened as ``/?token=TOKEN``.
- POST bodies must be JSON: a cross-site form cannot send that without a CORS preflight, which
  this server never grants.
- Every response forbids inline and foreign scripts (Content-Security-Policy): model text is only
  ever put in the page with ``textContent``, and the policy is a second wall behind that.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from posttrain.collect.db import DEFAULT_LEASE_S, Collection
from posttrain.collect.export import pairs_rows, rankings_rows, summarize, unpaired_rows
from posttrain.errors import ConfigError, PosttrainError

TOKEN_COOKIE = "posttrain_token"
STATIC = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[Request], Awaitable[Response]]


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (with or without brackets)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen on a non-loopback address without a token (anyone on the network could label)."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"refusing to serve on {host!r} without a token: anyone who can reach it could "
                          "read and write labels. Set --token (or POSTTRAIN_COLLECT_TOKEN), "
                          "or bind 127.0.0.1")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=HEADERS)


def _host_name(request: Request) -> str:
    host = request.headers.get("host", "")
    return host.rsplit(":", 1)[0] if not host.endswith("]") else host


def _refusal(request: Request, token: str | None) -> JSONResponse | None:
    """Why this request may not go on (a response), or None when it may."""
    if token:
        header = request.headers.get("authorization", "")
        offered = [header[7:] if header.lower().startswith("bearer ") else "",
                   request.headers.get("x-posttrain-token", ""), request.cookies.get(TOKEN_COOKIE, "")]
        if request.url.path == "/":
            offered.append(request.query_params.get("token", ""))
        if not any(o and hmac.compare_digest(o.encode(), token.encode()) for o in offered):
            return _error(401, "missing or wrong token: open the page as /?token=TOKEN or send "
                               "'Authorization: Bearer TOKEN'")
    elif not is_loopback(_host_name(request)):
        return _error(403, f"host {request.headers.get('host', '')!r} refused: without a token this server "
                           "only answers requests addressed to localhost")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "POST" and content_type != "application/json":
        return _error(415, "POST bodies must be sent as application/json")
    return None


def _guarded(handler: Handler, token: str | None) -> Handler:
    async def endpoint(request: Request) -> Response:
        refusal = _refusal(request, token)
        if refusal is not None:
            return refusal
        try:
            return await handler(request)
        except PosttrainError as error:
            return _error(400, str(error))
    return endpoint


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ConfigError("request body must be a JSON object")
    return body


def create_app(db_path: str, *, token: str | None = None, k: int = 1,
               lease_s: float = DEFAULT_LEASE_S) -> Starlette:
    """The app over the collection at ``db_path``; ``k`` = annotators per item."""
    collection = Collection(db_path, create=False)
    if k < 1:
        raise ConfigError(f"k (annotators per item) must be >= 1; got {k}")

    def reply(data: Any) -> JSONResponse:
        return JSONResponse(data, headers=HEADERS)

    async def page(request: Request) -> Response:
        return await static(request, "index.html")

    async def static(request: Request, name: str | None = None) -> Response:
        name = name or request.path_params["name"]
        if name not in STATIC:
            return _error(404, f"no file {name!r}")
        text = resources.files("posttrain.collect").joinpath("static", name).read_text(encoding="utf-8")
        response = Response(text, media_type=STATIC[name], headers=HEADERS)
        offered = request.query_params.get("token", "")
        if token and name == "index.html" and offered:
            response.set_cookie(TOKEN_COOKIE, offered, httponly=True, samesite="strict")
        return response

    async def state(request: Request) -> Response:
        who = request.query_params.get("annotator", "")
        progress = await run_in_threadpool(collection.progress, who, k) if who else None
        return reply({"mode": collection.mode, "k": k, "progress": progress})

    async def next_item(request: Request) -> Response:
        who = request.query_params.get("annotator", "")
        item = await run_in_threadpool(collection.next_item, who, k, lease_s)
        return reply({"item": item, "progress": await run_in_threadpool(collection.progress, who, k)})

    async def label(request: Request) -> Response:
        body = await _body(request)
        who = body.get("annotator", "")
        await run_in_threadpool(collection.submit, who, body.get("item_id"), body.get("value"))
        return reply({"ok": True, "progress": await run_in_threadpool(collection.progress, who, k)})

    async def skip(request: Request) -> Response:
        body = await _body(request)
        who = body.get("annotator", "")
        await run_in_threadpool(collection.skip, who, body.get("item_id"))
        return reply({"ok": True, "progress": await run_in_threadpool(collection.progress, who, k)})

    async def undo(request: Request) -> Response:
        who = (await _body(request)).get("annotator", "")
        undone = await run_in_threadpool(collection.undo, who)
        return reply({"undone": undone, "progress": await run_in_threadpool(collection.progress, who, k)})

    async def summary(request: Request) -> Response:
        return reply(summarize(await run_in_threadpool(collection.labels)))

    async def export(request: Request) -> Response:
        kind = request.path_params["kind"]
        labels = await run_in_threadpool(collection.labels)
        makers = {"rankings": rankings_rows, "unpaired": unpaired_rows,
                  "pairs": lambda rows: pairs_rows(rows, request.query_params.get("pairs", "all"))}
        if kind not in makers:
            return _error(404, f"unknown export {kind!r}: rankings, pairs or unpaired")
        rows, _ = makers[kind](labels)
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        return Response(text, media_type="application/x-ndjson", headers=HEADERS)

    handlers: list[tuple[str, Handler, list[str]]] = [
        ("/", page, ["GET"]), ("/static/{name}", static, ["GET"]), ("/api/state", state, ["GET"]),
        ("/api/next", next_item, ["GET"]), ("/api/label", label, ["POST"]), ("/api/skip", skip, ["POST"]),
        ("/api/undo", undo, ["POST"]), ("/api/summary", summary, ["GET"]),
        ("/api/export/{kind}", export, ["GET"])]
    return Starlette(routes=[Route(path, _guarded(h, token), methods=m) for path, h, m in handlers])


def serve(db_path: str, *, host: str = "127.0.0.1", port: int = 8600, token: str | None = None, k: int = 1,
          mode: str | None = None, lease_s: float = DEFAULT_LEASE_S) -> None:
    """Run the labelling server under uvicorn until interrupted."""
    import uvicorn

    check_bind(host, token)
    if mode is not None:
        Collection(db_path, create=False).set_mode(mode)
    app = create_app(db_path, token=token, k=k, lease_s=lease_s)
    shown = f"[{host}]" if ":" in host else host
    hint = " (append ?token=YOUR_TOKEN)" if token else ""
    print(f"posttrain collect: labelling {db_path} at http://{shown}:{port}/{hint}; Ctrl-C stops", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
