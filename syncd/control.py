"""The control plane: health, metrics and plugin control over HTTP (DESIGN.md §4).

A quart-trio app served by hypercorn in the daemon's root nursery::

    GET  /                       status page for people
    GET  /health                 the votes seed's format: redis, database(s), status
    GET  /ping                   {"status": "ok"}
    GET  /health/live            200 while the event loop answers
    GET  /health/ready           200 only when Redis, every database and every plugin are fine
                                 (503 naming each plugin still starting or failed)
    GET  /metrics                Prometheus text from the daemon's own registry
    GET  /plugins                every plugin's status
    GET  /plugins/<name>         one plugin's status
    POST /plugins/<name>/pause   stop intake at the next batch boundary
    POST /plugins/<name>/resume
    POST /plugins/<name>/flush   move what is pending now; answers with what it did
    GET  /plugins/<name>/dead-letters?limit=&offset=   its dead letters, newest first
    GET  /plugins/<name>/dead-letters/reasons          their reasons, grouped, with counts
    POST /plugins/<name>/dead-letters/requeue          {"all": true}, {"ids": [...]}, {"oldest": N}
    POST /plugins/<name>/dead-letters/purge            the same selection
    GET  /plugins/<name>/panel   the plugin's own panel for the status page, if it has one

plus the routes plugins add through ``syncd_http_routes``. Every answer,
errors included, is JSON (except ``/``, ``/metrics``). When ``http.token`` is
set, every request that may change state (any method but GET, HEAD, OPTIONS)
needs ``Authorization: Bearer <token>``; reading stays open. Without a token
the config keeps the listener on loopback, and state-changing requests must
come from a loopback ``Host`` with no foreign ``Origin``, so a web page in the
operator's browser cannot drive syncd by cross-site requests or DNS rebinding.

Work that must not be cut short by a client hanging up (a flush) or that a
blocked driver thread could make overrun the answer (a backend probe) runs
in the control plane's own nursery, never on quart-trio's ``app.nursery``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Response, request
from quart.json.provider import DefaultJSONProvider
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from syncd import dashboard
from syncd.errors import TransientError
from syncd.logs import get_logger
from syncd.panel import Panel
from syncd.plugin import Route
from syncd.quarantine import MAX_LIMIT, Quarantine, Selection, SelectionError
from syncd.supervisor import NotRunning, unwrap

if TYPE_CHECKING:
    from syncd.daemon import Daemon
    from syncd.supervisor import PluginRunner

log = get_logger("control")

#: Methods that only read; everything else needs the token when one is set.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Plugin states in which /health/ready answers 503.
NOT_READY_STATES = frozenset({"starting", "failed"})
#: Seconds each backend probe of /health and /health/ready may take.
PROBE_TIMEOUT = 2.0
#: Seconds in-flight requests get once the daemon stops the control plane
#: (the daemon's own HTTP_GRACE, a little longer, is the hard stop).
GRACEFUL_TIMEOUT = 3.0
#: Seconds a client may take to send a request body.
BODY_TIMEOUT = 10.0


async def serve_control_plane(
    daemon: Daemon,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control plane until ``stop`` is set, then let requests finish.

    ``task_status.started()`` receives the bound URLs (``["http://127.0.0.1:
    54321"]``, the real port when the config asked for port 0) once the socket
    listens: hypercorn calls it after binding, so a client may connect at once.
    """
    async with trio.open_nursery() as tasks:
        app = create_app(daemon, tasks)
        await serve(app, hypercorn_config(daemon), shutdown_trigger=stop.wait,
                    task_status=task_status)
        # Probes and flushes still running belong to no request any more.
        tasks.cancel_scope.cancel()


def hypercorn_config(daemon: Daemon) -> HypercornConfig:
    http = daemon.config.http
    config = HypercornConfig()
    host = http.host
    config.bind = [f"[{host}]:{http.port}" if ":" in host else f"{host}:{http.port}"]
    # Records go to the standard loggers, formatted by syncd's handlers. The
    # access log costs a formatted line per request, so it is on only when
    # someone enabled the "hypercorn.access" logger at INFO.
    config.errorlog = logging.getLogger("hypercorn.error")
    access = logging.getLogger("hypercorn.access")
    config.accesslog = access if access.isEnabledFor(logging.INFO) else None
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.include_server_header = False
    return config


# -- the app ---------------------------------------------------------------------------


class _JSONProvider(DefaultJSONProvider):
    """Quart's JSON, plus anything else rendered as a string (plugin details)."""

    @staticmethod
    def default(o: Any) -> Any:
        try:
            return DefaultJSONProvider.default(o)
        except TypeError:
            return str(o)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, default=str, ensure_ascii=False)
    return Response(body, status=status, headers=headers, content_type="application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": message, "status": status}, status, headers)


def create_app(daemon: Daemon, tasks: trio.Nursery) -> QuartTrio:
    """Build the quart-trio app; ``tasks`` runs work that may outlive a request."""
    app = QuartTrio("syncd.control")
    app.json = _JSONProvider(app)
    app.config.update(
        MAX_CONTENT_LENGTH=daemon.config.http.max_body,
        BODY_TIMEOUT=BODY_TIMEOUT,
        PROPAGATE_EXCEPTIONS=False,
    )
    token = daemon.config.http.token
    max_body = daemon.config.http.max_body
    # Series that exist from the first scrape, at 0, rather than appear on first use.
    for status in ("healthy", "unhealthy"):
        daemon.metrics.health_checks.labels(status)
    for name in daemon.databases:
        daemon.metrics.database_errors.labels(name)

    # -- guards and errors -----------------------------------------------------------

    @app.before_request
    async def guard() -> Response | None:
        if request.method not in SAFE_METHODS:
            if token:
                if not _bearer_matches(request.headers.get("Authorization"), token):
                    return error_response(401, "a valid bearer token is required",
                                          {"WWW-Authenticate": 'Bearer realm="syncd"'})
            else:
                refused = _cross_site(request.headers.get("Host"), request.headers.get("Origin"))
                if refused:
                    return error_response(403, refused)
        if request.content_length is not None and request.content_length > max_body:
            return error_response(413, f"request body larger than {max_body} bytes")
        if request.method not in SAFE_METHODS:
            # Read it now, so a body sent without Content-Length is held to the
            # limit too (quart raises 413 past it) even if the view never reads it.
            await request.get_data()
        return None

    @app.after_request
    async def headers(response: Response) -> Response:
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        extra = {}
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            extra["Allow"] = ", ".join(sorted(exc.valid_methods))
        return error_response(exc.code or 500, (exc.name or "error").lower(), extra)

    @app.errorhandler(Exception)
    async def crash(exc: Exception) -> Response:
        log.error("control plane request failed", exc_info=exc,
                  extra={"method": request.method, "path": request.path})
        return error_response(500, "internal server error")

    # -- health ------------------------------------------------------------------------

    async def check() -> dict[str, dict[str, Any]]:
        return await daemon.check_backends(PROBE_TIMEOUT, nursery=tasks)

    @app.get("/health")
    async def health() -> Response:
        checks = await check()
        databases = {
            name: _connected(checks[f"database:{name}"]["ok"]) for name in daemon.databases
        }
        healthy = checks["redis"]["ok"] and all(v == "connected" for v in databases.values())
        daemon.metrics.health_checks.labels(_healthy(healthy)).inc()
        body = {
            "status": _healthy(healthy),
            "service": "syncd",
            "redis": _connected(checks["redis"]["ok"]),
            "database": _connected(all(v == "connected" for v in databases.values())),
            "databases": databases,
            "timestamp": _now(),
        }
        return json_response(body, 200 if healthy else 503)

    @app.get("/ping")
    async def ping() -> Response:
        return json_response({"status": "ok", "message": "pong"})

    @app.get("/health/live")
    async def live() -> Response:
        return json_response({"status": "alive", "timestamp": _now()})

    @app.get("/health/ready")
    async def ready() -> Response:
        checks = await check()
        # A plugin still starting (recovering what a previous run left in
        # flight, perhaps blocked on a database lock) is not ready yet either;
        # a running one may say itself that it is not (views, unsubscribed).
        plugins = {}
        reasons = [f"{key}: {c.get('error', 'failed')}" for key, c in checks.items() if not c["ok"]]
        for name, runner in daemon.runners.items():
            own = runner.not_ready()
            plugins[name] = {"state": runner.state,
                             "ok": runner.state not in NOT_READY_STATES and not own,
                             "paused": runner.gate.paused}
            if runner.state in NOT_READY_STATES:
                reasons.append(f"plugin {name} is {runner.state}")
            elif own:
                plugins[name]["reason"] = own
                reasons.append(f"plugin {name}: {own}")
        if daemon.shutting_down:
            reasons.append("shutting down")
        daemon.metrics.health_checks.labels(_healthy(not reasons)).inc()
        body = {
            "status": "ready" if not reasons else "not_ready",
            "service": "syncd",
            "reasons": reasons,
            "checks": checks,
            "plugins": plugins,
            "shutting_down": daemon.shutting_down,
            "timestamp": _now(),
        }
        return json_response(body, 503 if reasons else 200)

    # -- metrics -----------------------------------------------------------------------

    @app.get("/metrics")
    async def metrics() -> Response:
        # Cheap to redo and makes the scrape truthful even if a state change
        # ever bypassed the runner's own bookkeeping.
        for name, runner in daemon.runners.items():
            daemon.metrics.set_state(name, runner.state)
            daemon.metrics.paused.labels(name).set(1 if runner.gate.paused else 0)
        return Response(daemon.metrics.exposition(), content_type=CONTENT_TYPE_LATEST)

    # -- plugins -----------------------------------------------------------------------

    def find(name: str) -> PluginRunner:
        runner = daemon.runner(name)
        if runner is None:
            raise _NoSuchPlugin(name)
        return runner

    @app.errorhandler(_NoSuchPlugin)
    async def no_such_plugin(exc: _NoSuchPlugin) -> Response:
        return error_response(404, f"no plugin named {exc.name!r} is enabled")

    @app.get("/plugins")
    async def plugins() -> Response:
        return json_response([runner.status() for runner in daemon.runners.values()])

    @app.get("/plugins/<name>")
    async def plugin(name: str) -> Response:
        return json_response(find(name).status())

    @app.post("/plugins/<name>/pause")
    async def pause(name: str) -> Response:
        runner = find(name)
        runner.pause()
        return json_response(runner.status())

    @app.post("/plugins/<name>/resume")
    async def resume(name: str) -> Response:
        runner = find(name)
        runner.resume()
        return json_response(runner.status())

    @app.post("/plugins/<name>/flush")
    async def flush(name: str) -> Response:
        runner = find(name)
        try:
            # A client that hangs up must not cut a flush short mid-batch.
            result = await _detached(tasks, runner.flush)
        except NotRunning as exc:
            return error_response(409, str(exc))
        except Exception as exc:  # the runner already logged and counted it
            error = unwrap(exc)
            message = f"{type(error).__name__}: {error}"
            return error_response(503 if isinstance(error, TransientError) else 500, message)
        if result.dead_lettered:
            await daemon.observer.refresh(name)
        return json_response({"plugin": name, **result.as_dict()})

    # -- dead letters ------------------------------------------------------------------

    def quarantine(name: str) -> Quarantine:
        find(name)
        return daemon.quarantines[name]

    @app.errorhandler(_BadRequest)
    async def bad_request(exc: _BadRequest) -> Response:
        return error_response(400, str(exc))

    @app.errorhandler(TransientError)
    async def backend_away(exc: TransientError) -> Response:
        return error_response(503, str(exc))

    @app.get("/plugins/<name>/dead-letters")
    async def dead_letters(name: str) -> Response:
        box = quarantine(name)
        limit = _int_arg("limit", 50, 1, MAX_LIMIT)
        offset = _int_arg("offset", 0, 0, None)
        total, entries = await box.page(limit, offset)
        stats = await box.stats()
        now = time.time()
        return json_response({
            "plugin": name,
            "lists": list(box.lists),
            "total": total,
            "limit": limit,
            "offset": offset,
            "oldest_age_seconds": stats.as_dict(now)["oldest_age_seconds"],
            "requeue_supported": box.restorer is not None,
            "items": [box.describe(entry, now) for entry in entries],
        })

    @app.get("/plugins/<name>/dead-letters/reasons")
    async def dead_letter_reasons(name: str) -> Response:
        box = quarantine(name)
        scanned, groups = await box.reasons()
        total = (await box.stats()).waiting
        return json_response({"plugin": name, "total": total, "scanned": scanned,
                              "reasons": groups})

    async def selection() -> Selection:
        data = await request.get_data()
        try:
            body = json.loads(data) if data else None
        except ValueError:
            raise _BadRequest("the body is not valid JSON") from None
        try:
            return Selection.parse(body)
        except SelectionError as exc:
            raise _BadRequest(str(exc)) from None

    @app.post("/plugins/<name>/dead-letters/requeue")
    async def requeue(name: str) -> Response:
        box = quarantine(name)
        chosen = await selection()
        # Not cut short by a client hanging up (each item is atomic anyway).
        outcome = await _detached(tasks, lambda: box.requeue(chosen))
        log.info("dead letters requeued", extra={"plugin": name, "requeued": outcome.done,
                                                 "refused": len(outcome.refused)})
        await daemon.observer.refresh(name)
        return json_response({"plugin": name, **outcome.as_dict("requeued")})

    @app.post("/plugins/<name>/dead-letters/purge")
    async def purge(name: str) -> Response:
        box = quarantine(name)
        chosen = await selection()
        outcome = await _detached(tasks, lambda: box.purge(chosen))
        log.info("dead letters purged", extra={"plugin": name, "purged": outcome.done})
        await daemon.observer.refresh(name)
        return json_response({"plugin": name, **outcome.as_dict("purged")})

    # -- a plugin's own panel ------------------------------------------------------------

    @app.get("/plugins/<name>/panel")
    async def panel(name: str) -> Response:
        runner = find(name)
        if runner.worker is None:
            return error_response(404, f"plugin {name} has no running worker")
        builders = [b for b in daemon.pm.hook.syncd_status_panel(
            plugin=name, worker=runner.worker) if b is not None]
        if not builders:
            return error_response(404, f"plugin {name} has no panel")
        built = await builders[0]()
        if not isinstance(built, Panel):
            raise TypeError(f"syncd_status_panel of {name} built {built!r}, not a syncd.Panel")
        return json_response({"plugin": name, **built.as_dict()})

    # -- the page for people -------------------------------------------------------------

    @app.get("/")
    async def index() -> Response:
        return Response(dashboard.PAGE, content_type="text/html; charset=utf-8", headers={
            "Content-Security-Policy": dashboard.CONTENT_SECURITY_POLICY,
            "Referrer-Policy": "no-referrer",
        })

    mount_plugin_routes(app, daemon)
    return app


class _BadRequest(Exception):
    """A request the client must change: answered 400 with this message."""


def _int_arg(name: str, default: int, low: int, high: int | None) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be a whole number, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _BadRequest(f"{name} must be {bound}, got {value}")
    return value


class _NoSuchPlugin(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


async def _detached(tasks: trio.Nursery, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Await ``fn()`` run as a task of ``tasks``: cancelling the caller leaves it running."""
    done = trio.Event()
    box: dict[str, Any] = {}

    async def job() -> None:
        try:
            box["value"] = await fn()
        except Exception as exc:  # handed to the caller, if it is still there
            box["error"] = exc
        finally:
            done.set()

    tasks.start_soon(job)
    await done.wait()
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- plugin routes ---------------------------------------------------------------------


@attrs.define(eq=False)
class PluginRoutes:
    """One plugin's routes, asked again from its hook whenever the worker changes.

    The supervisor replaces a crashed worker with a new one; a route must
    reach the worker that runs now, not the dead one it was first built for.
    Paths are mounted once, at start-up; their handlers are looked up per request.
    """

    runner: PluginRunner
    hook: Any
    worker: Any = None
    handlers: dict[tuple[str, frozenset[str]], Callable[..., Any]] = attrs.Factory(dict)

    def collect(self) -> list[Route]:
        """Ask the plugin for its routes for the current worker."""
        worker = self.runner.worker
        results = self.hook.syncd_http_routes(plugin=self.runner.name, worker=worker)
        routes = [r for result in results if result for r in result]
        for route in routes:
            if not isinstance(route, Route):
                raise TypeError(f"syncd_http_routes returned {route!r}, not a syncd.Route")
        self.worker = worker
        self.handlers = {_route_key(r): r.handler for r in routes}
        return routes

    def handler(self, key: tuple[str, frozenset[str]]) -> Callable[..., Any]:
        current = self.runner.worker
        if current is not None and current is not self.worker:
            try:
                self.collect()
            except Exception:
                log.exception("syncd_http_routes failed; keeping the previous routes",
                              extra={"plugin": self.runner.name})
                self.worker = current
        return self.handlers[key]


def _route_key(route: Route) -> tuple[str, frozenset[str]]:
    return route.path, frozenset(m.upper() for m in route.methods)


def mount_plugin_routes(app: QuartTrio, daemon: Daemon) -> None:
    """Mount the routes of every plugin that has a worker; a bad route is skipped, loudly."""
    for name, runner in daemon.runners.items():
        if runner.worker is None:
            continue
        table = PluginRoutes(runner, daemon.pm.hook)
        try:
            routes = table.collect()
        except Exception:
            log.exception("syncd_http_routes failed; the plugin gets no routes",
                          extra={"plugin": name})
            continue
        for index, route in enumerate(routes):
            key = _route_key(route)
            clash = _clash(app, route.path, key[1])
            if clash:
                log.error("plugin route not mounted", extra={
                    "plugin": name, "path": route.path, "reason": clash})
                continue
            try:
                app.add_url_rule(route.path, endpoint=f"plugin:{name}:{index}",
                                 view_func=_dispatcher(app, table, key), methods=sorted(key[1]))
            except (ValueError, TypeError, AssertionError) as exc:
                log.error("plugin route not mounted", extra={
                    "plugin": name, "path": route.path, "reason": str(exc)})
                continue
            log.info("plugin route mounted", extra={
                "plugin": name, "path": route.path, "methods": ",".join(sorted(key[1]))})


def _dispatcher(
    app: QuartTrio, table: PluginRoutes, key: tuple[str, frozenset[str]]
) -> Callable[..., Awaitable[Any]]:
    async def view(**params: Any) -> Any:
        return await app.ensure_async(table.handler(key))(**params)

    return view


def _clash(app: QuartTrio, path: str, methods: frozenset[str]) -> str | None:
    for rule in app.url_map.iter_rules():
        if rule.rule == path and (rule.methods or set()) & methods:
            return f"{path} is already served ({rule.endpoint})"
    return None


# -- helpers ---------------------------------------------------------------------------


def _bearer_matches(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Constant time, so the answer's timing says nothing about the token.
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


def _cross_site(host: str | None, origin: str | None) -> str | None:
    """Why a token-less state-changing request is refused, or None to allow it."""
    hostname = _hostname(host or "")
    if not _is_loopback(hostname):
        return (f"Host {host!r} is not a loopback name; without http.token only local "
                "requests may change state")
    if origin is not None:
        origin_host = origin.partition("://")[2]
        if origin == "null" or origin_host.lower() != (host or "").lower():
            return ("cross-site request refused; without http.token only same-origin "
                    "requests may change state")
    return None


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_loopback(hostname: str) -> bool:
    if hostname.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _connected(ok: bool) -> str:
    return "connected" if ok else "disconnected"


def _healthy(ok: bool) -> str:
    return "healthy" if ok else "unhealthy"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
