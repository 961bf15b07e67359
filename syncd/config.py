"""Configuration: one YAML file, ``SYNCD_*`` overrides, attrs classes.

Everything is validated at start-up into frozen attrs classes, and the first
problem is reported as a `ConfigError` naming the key (``plugins.traffic.
interval: expected a duration like 500ms, 30s or 5m, got 'soon'``), so a
wrong value never surfaces as a traceback an hour later. The same converter
(`structure`) serves the core's classes and every plugin's config class.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import socket
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union
from urllib.parse import urlsplit

import attrs
import yaml

from syncd.errors import ConfigError
from syncd.redact import MASK, mask_url, scrub

T = TypeVar("T")

ENV_PREFIX = "SYNCD_"
DEFAULT_CONFIG_FILE = "syncd.yaml"


class Duration(float):
    """Seconds, written in config as ``500ms``, ``30s``, ``5m``, ``1h`` or a number."""

    _UNITS: typing.ClassVar[dict[str, float]] = {
        "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
    }
    _RE: typing.ClassVar[re.Pattern[str]] = re.compile(
        r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$"
    )

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError(f"expected a duration like 500ms, 30s or 5m, got {value!r}")
        if isinstance(value, int | float):
            if not math.isfinite(value):
                raise ValueError(f"expected a finite duration like 500ms, 30s or 5m, got {value!r}")
            if value < 0:
                raise ValueError(f"a duration cannot be negative, got {value!r}")
            return cls(value)
        match = cls._RE.match(str(value))
        if not match:
            raise ValueError(f"expected a duration like 500ms, 30s or 5m, got {value!r}")
        number, unit = match.groups()
        return cls(float(number) * cls._UNITS[unit or "s"])

    def __repr__(self) -> str:
        return f"Duration({float(self)!r})"


class Secret(str):
    """A string that never prints itself (tokens, passwords)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(MASK)


# -- the core's configuration ------------------------------------------------------


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}", attribute)


def _between(low: float, high: float, unit: str = "s") -> Any:
    """A validator: ``low < value <= high``."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
        if not low < value <= high:
            raise ValueError(
                f"must be more than {low:g}{unit} and at most {high:g}{unit}, got {value:g}{unit}",
                attribute)

    return check


def _at_least_a_day(attribute: attrs.Attribute[Any], value: float) -> None:
    """A ledger row must outlive any copy of its batch still in Redis (a host
    down for hours, then a replay): forgetting it sooner could apply twice."""
    if value < 86400:
        raise ValueError(f"must be at least 1d (a replay after a long outage "
                         f"must still find its batch), got {value:g}s", attribute)
    if value > 36500 * 86400:  # past what the databases' date arithmetic takes
        raise ValueError(f"must be at most 36500d, got {value:g}s", attribute)


#: A lease lives at least a little over a second (it is renewed every third
#: of it: a shorter one would change hands on every GC pause or busy
#: database) and at most an hour (a dead holder blocks its plugin that long).
LEASE_TTL_RANGE = (1.0, 3600.0)
#: Longest lease name (the ``name`` column of ``syncd_leases`` is VARCHAR(191)).
LEASE_NAME_MAX = 191


def _check_lease_ttl(attribute: attrs.Attribute[Any] | None, value: float) -> None:
    low, high = LEASE_TTL_RANGE
    if not low <= value <= high:
        raise ValueError(f"must be at least {low:g}s and at most {high:g}s, got {value:g}s",
                         attribute)


@attrs.frozen
class RedisConfig:
    """Attributes:
    url: ``redis://[:password@]host:port/db`` (``rediss://`` for TLS), or a
        Redis Cluster: ``redis+cluster://[:password@]host:port[,host:port...]``.
    pool_size: Connections (and worker threads) for Redis.
    """

    url: str = attrs.field(default="redis://localhost:6379/0", repr=mask_url)
    pool_size: int = attrs.field(default=16, validator=_positive)


@attrs.frozen
class HttpConfig:
    """Attributes:
    listen: ``host:port`` of the control plane; port 0 picks a free one.
    token: Bearer token required for state-changing requests.
    max_body: Largest request body accepted, in bytes.
    enabled: False runs the daemon without a control plane.
    """

    listen: str = "127.0.0.1:8080"
    token: Secret | None = None
    max_body: int = attrs.field(default=1 << 20, validator=_positive)
    enabled: bool = True

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def loopback(self) -> bool:
        host = self.host
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


@attrs.frozen
class Config:
    """The whole daemon configuration (DESIGN.md §5).

    ``plugins`` holds the raw sections until the installed plugins are known;
    `resolve_plugins` validates each section against its plugin's class.
    """

    redis: RedisConfig = attrs.Factory(RedisConfig)
    databases: dict[str, str] = attrs.field(
        factory=lambda: {"default": "sqlite:///syncd.sqlite3"},
        repr=lambda dbs: repr({name: mask_url(url) for name, url in dbs.items()}),
    )
    http: HttpConfig = attrs.Factory(HttpConfig)
    shutdown_grace: Duration = attrs.field(
        default=Duration(30), validator=_between(-1, 86400))
    lock_timeout: Duration = attrs.field(default=Duration(5), validator=_between(0, 86400))
    idle_transaction_timeout: Duration = attrs.field(
        default=Duration(60), validator=_between(0, 86400))
    log_level: str = attrs.field(
        default="info",
        validator=attrs.validators.in_(["debug", "info", "warning", "error", "critical"]),
    )
    log_format: str = attrs.field(
        default="logfmt", validator=attrs.validators.in_(["logfmt", "json"]))
    instance: str = attrs.Factory(socket.gethostname)
    restart_backoff_max: Duration = attrs.field(
        default=Duration(30), validator=_between(0, 86400))
    ledger_retention: Duration = attrs.field(
        default=Duration(30 * 86400), validator=lambda i, a, v: _at_least_a_day(a, v))
    lease_ttl: Duration = attrs.field(
        default=Duration(10), validator=lambda i, a, v: _check_lease_ttl(a, v))
    plugins: dict[str, dict[str, Any]] | None = None

    def redacted(self) -> dict[str, Any]:
        """The config as plain data with passwords and tokens masked, for printing."""
        data = attrs.asdict(self, recurse=True)
        data["redis"]["url"] = mask_url(self.redis.url)
        data["databases"] = {name: mask_url(url) for name, url in self.databases.items()}
        if self.http.token is not None:
            data["http"]["token"] = MASK
        data["shutdown_grace"] = float(self.shutdown_grace)
        data["lock_timeout"] = float(self.lock_timeout)
        data["idle_transaction_timeout"] = float(self.idle_transaction_timeout)
        data["restart_backoff_max"] = float(self.restart_backoff_max)
        data["ledger_retention"] = float(self.ledger_retention)
        data["lease_ttl"] = float(self.lease_ttl)
        return data


@attrs.frozen
class PluginSettings:
    """One enabled-or-not plugin section, validated.

    Attributes:
        name: Plugin name.
        enabled: Whether it runs.
        database: Name of the entry in ``databases`` it writes to.
        options: The plugin's own config class instance.
        exclusive: At most one replica runs it at a time, under a lease
            (``exclusive``; the plugin declares the default).
        lease_ttl: Seconds the lease lasts without renewal (``lease_ttl``;
            None: the daemon's ``lease_ttl``).
        lease_name: What replicas that share the lease call it
            (``lease_name``; None: the plugin's own choice, else its name).
        left_out: Why the embedded default did not enable it (it cannot run
            on SQLite or Redis Cluster), for the log; else None.
    """

    name: str
    enabled: bool
    database: str
    options: Any
    exclusive: bool = False
    lease_ttl: float | None = None
    lease_name: str | None = None
    left_out: str | None = None


# -- loading -------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Read the config file (``path``, else ``./syncd.yaml`` if present, else
    the embedded default), apply ``SYNCD_*`` overrides, and validate."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source: Path | None = None
    if path is not None:
        source = Path(path)
        if not source.is_file():
            raise ConfigError("--config", f"no such file: {source}")
    elif (candidate := (cwd or Path.cwd()) / DEFAULT_CONFIG_FILE).is_file():
        source = candidate
    if source is not None:
        try:
            loaded = yaml.safe_load(source.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(str(source), f"not valid YAML: {exc}".replace("\n", " ")) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(str(source), "the top level must be a mapping of keys")
        data = loaded
    data = apply_env_overrides(data, environ)
    if "log_level" not in data and "LOG_LEVEL" in environ:
        data["log_level"] = environ["LOG_LEVEL"].lower()
    return parse_config(data)


def parse_config(data: Mapping[str, Any]) -> Config:
    """Validate plain data (as read from YAML) into a `Config`."""
    config = structure(Config, data)
    _check(config)
    return config


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``SYNCD_A__B=v`` sets ``data["a"]["b"] = v``; the value is read as YAML,
    so ``true``, ``5`` and ``[a, b]`` keep their types."""
    data = _deepcopy(data)
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name.startswith(ENV_PREFIX + "TEST_"):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        if not all(path) or path[0] in _NOT_CONFIG_ENV:
            continue
        value = _env_value(environ[name])
        node = data
        for i, key in enumerate(path[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(".".join(path[: i + 1]), f"set by {name} but is not a section")
            node = child
        node[path[-1]] = value
    return data


def _env_value(raw: str) -> Any:
    """Scalars stay strings (``structure`` converts them by the field's type,
    so an instance named ``007`` stays ``"007"``); lists and mappings are YAML."""
    if raw.strip() in ("", "null", "~"):
        return None
    if raw.lstrip()[:1] in ("[", "{"):
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw
    return raw


#: ``SYNCD_*`` variables that steer the program rather than set config keys.
_NOT_CONFIG_ENV = {"config", "disable_plugin_autoload", "crash_at", "crash_after", "stop_at",
                   "stop_after"}


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _deepcopy(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_deepcopy(value) for value in data]
    return data


def _check(config: Config) -> None:
    """Rules that involve several keys at once."""
    try:
        split_listen(config.http.listen)
    except ValueError as exc:
        raise ConfigError("http.listen", str(exc)) from None
    if config.http.enabled and not config.http.loopback and not config.http.token:
        raise ConfigError(
            "http.token",
            f"required when http.listen ({config.http.listen}) is not a loopback address "
            "(set http.token or SYNCD_HTTP__TOKEN, or listen on 127.0.0.1)",
        )
    _check_redis_url(config.redis.url)
    if not config.databases:
        raise ConfigError("databases", "at least one database is required")
    from syncd.sql import open_database  # late: the sql package imports drivers

    for name, url in config.databases.items():
        if not isinstance(url, str) or not url:
            raise ConfigError(f"databases.{name}", "expected a database URL")
        try:
            db = open_database(name, url)
        except (ValueError, TypeError) as exc:
            # Never the raw URL: the driver's message may quote it, password and all.
            raise ConfigError(f"databases.{name}", scrub(str(exc), url)) from None
        folder = getattr(db, "folder", None)  # SQLite: the file's directory must exist
        if folder is not None and not folder.is_dir():
            raise ConfigError(f"databases.{name}", f"no such directory for the SQLite file: "
                                                   f"{folder}")
    if not re.match(r"^[A-Za-z0-9_.:-]{1,100}$", config.instance):
        raise ConfigError("instance", "use letters, digits and _ . : - (at most 100)")


def _check_redis_url(url: str) -> None:
    """Parse the Redis URL now, as redis-py will: a wrong scheme, database
    number or option is a config error naming the key, not a traceback."""
    import redis  # late, like the SQL drivers

    from syncd.redis import is_cluster_url, parse_cluster_url

    if is_cluster_url(url):
        try:
            parse_cluster_url(url)
        except ValueError as exc:
            raise ConfigError("redis.url", f"{exc} (got {mask_url(url)})") from None
        return
    try:
        parts = urlsplit(url)
        redis.ConnectionPool.from_url(url)
    except (ValueError, TypeError) as exc:
        raise ConfigError("redis.url", scrub(str(exc), url).rstrip(".") +
                          f" (got {mask_url(url)})") from None
    # redis-py ignores a database number it cannot read (redis://host/abc is db 0).
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ConfigError("redis.url", f"the database must be a number, got {db!r}")


def resolve_plugins(
    config: Config, specs: Mapping[str, Any], *, embedded_default: bool | None = None
) -> dict[str, PluginSettings]:
    """Validate each plugin section against its installed plugin.

    A plugin runs when the config has a section for it whose ``enabled`` is
    not false. With no ``plugins`` key at all (the embedded default), every
    installed plugin runs with its defaults, so a newcomer sees it work.
    """
    sections = config.plugins
    embedded = sections is None and embedded_default in (None, True)
    if sections is None:
        sections = {name: {} for name in specs} if embedded else {}
    settings: dict[str, PluginSettings] = {}
    for name, raw in sections.items():
        key = f"plugins.{name}"
        if name not in specs:
            raise ConfigError(key, f"no such plugin is installed{_suggest(name, specs)}")
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError(key, "must be a mapping of options")
        raw = dict(raw)
        enabled = _structure_value(bool, raw.pop("enabled", True), f"{key}.enabled")
        database = _structure_value(str, raw.pop("database", "default"), f"{key}.database")
        spec = specs[name]
        exclusive = _structure_value(
            bool, raw.pop("exclusive", getattr(spec, "exclusive", False)), f"{key}.exclusive")
        lease_ttl = _lease_ttl(raw.pop("lease_ttl", None), f"{key}.lease_ttl")
        lease_name = _lease_name(raw.pop("lease_name", None), f"{key}.lease_name")
        if enabled and spec.uses_database and database not in config.databases:
            raise ConfigError(
                f"{key}.database",
                f"no database named {database!r} (configured: {', '.join(config.databases)})",
            )
        options = structure(spec.config, raw, key)
        left_out = None
        if enabled and (refusal := _cannot_run(config, spec, database, options)):
            if not embedded:
                raise ConfigError(*refusal)
            # Every plugin on defaults: those that can run here, run.
            enabled, left_out = False, refusal[1]
        settings[name] = PluginSettings(name, enabled, database, options, exclusive,
                                        lease_ttl, lease_name, left_out)
    return settings


def _cannot_run(config: Config, spec: Any, database: str,
                options: Any) -> tuple[str, str] | None:
    """(key, reason) if the plugin declares it cannot run on this database or
    Redis (or, on a cluster, not with these ``options``)."""
    from syncd.redis import is_cluster_url
    from syncd.sql import dialect_of

    key = f"plugins.{spec.name}"
    dialects = getattr(spec, "dialects", None)
    if spec.uses_database and dialects is not None:
        dialect = dialect_of(config.databases[database])
        if dialect not in dialects:
            return (f"{key}.database", f"the {spec.name} plugin needs "
                    f"{' or '.join(_DIALECT_NAMES.get(d, d) for d in dialects)}, "
                    f"not {_DIALECT_NAMES.get(dialect, dialect)} ({database!r})")
    if not is_cluster_url(config.redis.url):
        return None
    return cluster_refusal(spec, options)


def cluster_refusal(spec: Any, options: Any) -> tuple[str, str] | None:
    """(key, reason) if the plugin cannot run on Redis Cluster with these
    options (`PluginSpec.redis_cluster`), else None."""
    on_cluster = getattr(spec, "redis_cluster", True)
    if on_cluster is True:
        return None
    if on_cluster is False:
        return ("redis.url", f"the {spec.name} plugin does not run on Redis Cluster; "
                "give it a single Redis (another syncd instance) or disable it")
    refusal = on_cluster(options)
    return None if refusal is None else (f"plugins.{spec.name}.{refusal[0]}", refusal[1])


_DIALECT_NAMES = {"postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB", "sqlite": "SQLite"}


def _lease_ttl(value: Any, path: str) -> float | None:
    if value is None:
        return None
    ttl = _structure_value(Duration, value, path)
    try:
        _check_lease_ttl(None, ttl)
    except ValueError as exc:
        raise ConfigError(path, str(exc.args[0])) from None
    return float(ttl)


def _lease_name(value: Any, path: str) -> str | None:
    if value is None:
        return None
    name = _structure_value(str, value, path)
    if not 0 < len(name) <= LEASE_NAME_MAX:
        raise ConfigError(path, f"must be 1 to {LEASE_NAME_MAX} characters long")
    return name


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) into its parts."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {listen!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


# -- structuring plain data into attrs classes -----------------------------------


def structure(cls: type[T], data: object, path: str = "") -> T:
    """Build attrs class ``cls`` from ``data``, naming the key of any problem.

    Field types drive the conversion: str, int, float, bool, `Duration`,
    `Secret`, ``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``,
    ``Literal[...]`` and nested attrs classes. Unknown keys are errors (a typo
    must not silently fall back to a default). attrs validators run too, and
    their messages are reported against the key.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path or "config", f"must be a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in attrs.fields(cls)}
    public = {field.alias or field.name: field for field in fields.values() if field.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in public:
            raise ConfigError(key_path, f"unknown key{_suggest(str(key), public)}")
        field = public[key]
        kwargs[key] = _structure_value(hints[field.name], value, key_path)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        key, problem = _blame(exc, path), _problem(exc)
        # attrs' stock validators say "'batch_size' must be > 0: 0".
        named = re.match(r"^'(\w+)' (.*)$", problem)
        if named and named.group(1) in public and key == (path or "config"):
            key = f"{path}.{named.group(1)}" if path else named.group(1)
            problem = named.group(2)
        raise ConfigError(key, problem) from None


def _structure_value(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        errors = []
        for option in options:
            try:
                return _structure_value(option, value, path)
            except ConfigError as exc:
                errors.append(exc.problem)
        raise ConfigError(path, errors[0] if len(errors) == 1 else " or ".join(errors))
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(path, f"expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (list, tuple, frozenset, set) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list, got {_kind(value)}")
        item_type = args[0] if args else Any
        items = [_structure_value(item_type, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return (origin or tp)(items)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {_kind(value)}")
        value_type = args[1] if len(args) == 2 else Any
        return {
            str(k): _structure_value(value_type, v, f"{path}.{k}") for k, v in value.items()
        }
    if tp is Any:
        return value
    if attrs.has(tp):
        return structure(tp, value, path)
    if tp is Duration:
        try:
            return Duration.parse(value)
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
        raise ConfigError(path, f"expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(path, f"expected a number, got {value!r}")
        try:
            number = tp(value)
        except ValueError:
            raise ConfigError(path, f"expected {'an integer' if tp is int else 'a number'}, "
                                    f"got {value!r}") from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return number
    if tp in (str, Secret):
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return tp(value)
        raise ConfigError(path, f"expected a string, got {_kind(value)}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(path, f"unsupported value {value!r}")


_BOOLS = {"true": True, "yes": True, "on": True, "1": True,
          "false": False, "no": False, "off": False, "0": False}


def _blame(exc: Exception, path: str) -> str:
    """Name the key an attrs validator complained about, when it says."""
    if len(exc.args) >= 2 and isinstance(exc.args[1], attrs.Attribute):
        name = exc.args[1].alias or exc.args[1].name
        return f"{path}.{name}" if path else name
    return path or "config"


def _problem(exc: Exception) -> str:
    if len(exc.args) >= 4 and isinstance(exc.args[1], attrs.Attribute):
        # attrs.validators.in_: ("msg", attribute, options, value)
        return f"expected one of {', '.join(map(repr, exc.args[2]))}, got {exc.args[3]!r}"
    return str(exc.args[0]) if exc.args else type(exc).__name__


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string"}.get(type(value), repr(value))


def _suggest(name: str, known: typing.Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(sorted(known))})" if known else ""
