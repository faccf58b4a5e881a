"""`digitd review`: the review page and its JSON API, a Starlette app served by uvicorn.

    GET  /                      the page (it carries the token for the requests below)
    GET  /api/queue             {"items": [...], "counts": {...}}; ?kind=low_confidence|audit,
                                ?digit=0-9, ?limit=N, ?session=S (hold the items for S, from
                                every review process on the outbox: review.leases)
    POST /api/verdict           {"id", "verdict", "label"}: 200 with the row written,
                                400 bad request, 404 unknown id, 403 without the token; a
                                number's label is its string of digits
    POST /api/undo              {"id"}: withdraw the verdict on id (appends a row "undone");
                                409 if it has none
    GET  /preview/<id>.png      the preview of a result under review, by id only
    GET  /input/<id>.png        its input (from processed/, checked by SHA-256), by id only
    GET  /static/...            the page's script and style, from the package

Safety: it binds 127.0.0.1 unless told otherwise; requests naming another host are refused
(a web page elsewhere cannot reach it through DNS rebinding); the requests that write need
the page's token in an X-Digitd-Token header, which another site's page can neither read nor
send (CSRF); files are found by id, never by a path taken from the request; the page may not
be framed. It never writes results.csv.
"""

from __future__ import annotations

import argparse
import getpass
import hmac
import html
import json
import os
import secrets
import socket
import sys
from importlib import resources

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from digitd.codes import ExitCode, Rejected
from digitd.config import Config, ConfigError, load_config, parse_listen
from digitd.intake import read_input_file
from digitd.outputs import OutboxError
from digitd.result import printable_name
from digitd.review.index import ID_PATTERN, Item, ReviewIndex
from digitd.review.verdicts import BadVerdict, Corrections, check_against, parse_verdict

log = structlog.get_logger("digitd.review")

TOKEN_HEADER = "X-Digitd-Token"
MAX_LIMIT = 500
MAX_BODY = 16 * 1024  # a verdict is a few dozen bytes
_SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class ReviewStation:
    """The outbox under review: the index, the corrections writer and the page's token."""

    def __init__(self, config: Config, reviewer: str, token: str | None = None) -> None:
        self.outbox = config.outbox
        self.index = ReviewIndex(config.outbox, config.review.audit_share)
        self.corrections = Corrections(config.outbox, reviewer, config.max_pixels)
        self.token = token or secrets.token_urlsafe(32)

    def prepare(self) -> None:
        if not (self.outbox / "results.csv").is_file():
            raise OutboxError(f"{self.outbox}: no results.csv: is this digitd's outbox?")
        self.corrections.prepare()
        self.index.refresh()

    # -- the API, as plain functions (run on the thread pool) ------------------------------

    def queue(self, params: dict[str, str]) -> dict:
        kind = params.get("kind", "low_confidence")
        if kind not in ("low_confidence", "audit"):
            raise BadVerdict('"kind" must be low_confidence or audit')
        digit = params.get("digit")
        if digit not in (None, "") and (len(digit) != 1 or digit not in "0123456789"):
            raise BadVerdict('"digit" must be a digit 0-9')
        limit = params.get("limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
            raise BadVerdict(f'"limit" must be 1 to {MAX_LIMIT}')
        session = params.get("session", "")
        if len(session) > 64:
            raise BadVerdict('"session" is too long')
        items = self.index.queue(kind, int(digit) if digit else None, session, int(limit))
        return {"items": [self.describe(i) for i in items], "counts": self.index.counts()}

    def describe(self, item: Item) -> dict:
        entry = self.index.batch_entry(item)
        return {
            "id": item.id,
            "file": entry.get("file") or item.file,
            "digit": item.digit,  # None for a number
            "digits": item.digits,  # the string read: the digit, or the number
            "confidence": item.confidence,
            "top": self.index.top(item),
            "parts": self.index.parts(item),  # a number's digits (doubtful ones flagged)
            # previews off (outputs.previews: false): the input itself, if it can be found
            "preview": f"/preview/{item.id}.png" if item.preview else f"/input/{item.id}.png",
            "kind": item.kind,
            "received_at": item.received_at,
            "processed_at": item.processed_at,
        }

    def verdict(self, body: object, undo: bool = False) -> tuple[int, dict]:
        """Check and write one verdict: (HTTP status, JSON answer). Nothing is written
        unless the answer is 200."""
        try:
            request = parse_verdict(body, undo=undo)
        except BadVerdict as exc:
            return 400, {"error": str(exc)}
        with self.index.lock:  # one verdict at a time in this process (the file lock: across)
            item = self.index.get(request.id)
            if item is None:
                return 404, {"error": f"no result under review has the id {request.id!r}"}
            if undo and not self.index.reviewed(item.id):
                return 409, {"error": f"{item.id} has no verdict to undo"}
            try:
                request = check_against(request, item)
            except BadVerdict as exc:
                return 400, {"error": str(exc)}
            name = self.index.batch_entry(item).get("file") or item.file
            row = self.corrections.record(request, item, name)
            self.index.refresh()
            if undo:
                self.index.release(item.id)
        log.info("verdict", id=item.id, verdict=row["verdict"], label=row["label"],
                 predicted=item.digits, reviewer=row["reviewer"], image=bool(row["image"]))
        return 200, {"row": row, "counts": self.index.counts()}

    def image(self, folder: str, item_id: str) -> bytes | None:
        """previews/<id>.png, or ("input") the input's own bytes, for a result under review."""
        item = self.index.get(item_id)
        if item is None:
            return None
        if folder == "input":
            name = self.index.batch_entry(item).get("file") or item.file
            return self.corrections.find_input(item, name)
        path = self.outbox / "previews" / f"{item.id}.png"  # by id, never the request's path
        try:
            return read_input_file(path, 40_000_000)
        except Rejected:
            return None

    def page(self, reviewer: str) -> str:
        template = resources.files("digitd.review").joinpath("static/index.html")
        return (template.read_text(encoding="utf-8")
                .replace("{{token}}", html.escape(self.token, quote=True))
                .replace("{{reviewer}}", html.escape(reviewer, quote=True))
                .replace("{{outbox}}", html.escape(str(self.outbox.resolve()), quote=True)))


def create_app(station: ReviewStation, allowed_hosts: list[str]) -> Starlette:
    """The Starlette app for `station`; requests with another Host header are refused."""

    def authorised(request: Request) -> bool:
        sent = request.headers.get(TOKEN_HEADER, "")
        return hmac.compare_digest(sent.encode(), station.token.encode())

    async def page(request: Request) -> Response:
        return HTMLResponse(station.page(station.corrections.reviewer))

    async def queue(request: Request) -> Response:
        try:
            answer = await run_in_threadpool(station.queue, dict(request.query_params))
        except BadVerdict as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(answer)

    def posting(undo: bool):
        async def endpoint(request: Request) -> Response:
            if not authorised(request):
                return JSONResponse({"error": f"missing or wrong {TOKEN_HEADER}"}, 403)
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    return JSONResponse({"error": "the body is too large"}, status_code=413)
            try:
                body = json.loads(body)
            except ValueError:
                return JSONResponse({"error": "the body must be JSON"}, status_code=400)
            status, answer = await run_in_threadpool(station.verdict, body, undo)
            return JSONResponse(answer, status_code=status)

        return endpoint

    def image(folder: str):
        async def endpoint(request: Request) -> Response:
            name = request.path_params["name"]
            item_id = name.removesuffix(".png")
            if not name.endswith(".png") or not ID_PATTERN.fullmatch(item_id):
                return JSONResponse({"error": f"no such {folder}"}, status_code=404)
            data = await run_in_threadpool(station.image, folder, item_id)
            if data is None:
                return JSONResponse({"error": f"no such {folder}"}, status_code=404)
            return Response(data, media_type="image/png")

        return endpoint

    static = StaticFiles(packages=[("digitd.review", "static")])
    routes = [
        Route("/", page),
        Route("/api/queue", queue),
        Route("/api/verdict", posting(undo=False), methods=["POST"]),
        Route("/api/undo", posting(undo=True), methods=["POST"]),
        Route("/preview/{name}", image("preview")),
        Route("/input/{name}", image("input")),
        Mount("/static", static, name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts, www_redirect=False),
    ]
    return Starlette(routes=routes, middleware=middleware)


class SecurityHeaders:
    """Adds _SECURITY_HEADERS to every response (a pure ASGI middleware)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def allowed_hosts(host: str) -> list[str]:
    """Host headers accepted: loopback names, the address listened on, this machine's names."""
    names = {"127.0.0.1", "localhost", "::1", "[::1]", host}
    if host not in ("127.0.0.1", "localhost", "::1"):
        names |= {socket.gethostname(), socket.getfqdn()}
    return sorted(n for n in names if n and n not in ("0.0.0.0", "::"))


def review_command(args: argparse.Namespace) -> int:
    """`digitd review`: serve the page until Ctrl-C or SIGTERM."""
    from digitd.logs import configure_logging

    try:
        config = load_config(args.config, outbox=args.outbox)
    except ConfigError as exc:
        print(f"digitd: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    listen = args.listen or config.review.listen
    address = parse_listen(listen)
    if address is None:
        print(f"digitd review: --listen {listen!r}: expected HOST:PORT", file=sys.stderr)
        return ExitCode.USAGE
    reviewer = args.reviewer or config.review.reviewer or _user()
    configure_logging(config.log.format, config.log.level)
    station = ReviewStation(config, reviewer)
    try:
        station.prepare()
    except (OSError, OutboxError) as exc:
        print(f"digitd review: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    import uvicorn

    host, port = address
    shown = f"[{host}]" if ":" in host else host
    log.info("review_ready", url=f"http://{shown}:{port}/", outbox=str(config.outbox),
             reviewer=reviewer, pending=station.index.counts()["queue"])
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("review_exposed", host=host,
                    hint="anyone who can reach this address can give verdicts")
    uvicorn.run(create_app(station, allowed_hosts(host)), host=host, port=port,
                log_level="warning", access_log=False, server_header=False)
    return ExitCode.OK


def _user() -> str:
    try:
        return printable_name(getpass.getuser())
    except (KeyError, OSError):
        return f"uid{os.getuid()}"
