"""Configuration: YAML + SYNCD_* overrides, validated with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from syncd.config import (
    Config,
    Duration,
    Secret,
    apply_env_overrides,
    load_config,
    parse_config,
    resolve_plugins,
    structure,
)
from syncd.errors import ConfigError
from syncd.plugin import PluginSpec


@attrs.frozen
class DemoOptions:
    interval: Duration = Duration(300)
    table: str = "nodes"
    batch_size: int = attrs.field(default=500, validator=attrs.validators.gt(0))
    columns: list[str] = attrs.Factory(lambda: ["upload", "download"])
    insert_missing: bool = False
    upload_column: str | None = None


SPECS = {"demo": PluginSpec(name="demo", config=DemoOptions, create=lambda ctx: None)}
#: Plugins that declare where they cannot run.
LIMITED = {
    **SPECS,
    "pgonly": PluginSpec(name="pgonly", config=DemoOptions, create=lambda ctx: None,
                         dialects=("postgresql",)),
    "nocluster": PluginSpec(name="nocluster", config=DemoOptions, create=lambda ctx: None,
                            redis_cluster=False),
}


class TestDuration:
    """Durations read the way people write them."""

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800),
         ("1.5s", 1.5), (10, 10), (0.25, 0.25), ("7", 7)],
    )
    def test_parses(self, text: object, seconds: float) -> None:
        assert Duration.parse(text) == pytest.approx(seconds)

    @pytest.mark.parametrize("bad", ["soon", "5 minutes", "-1s", -3, True, "1w", ""])
    def test_rejects(self, bad: object) -> None:
        with pytest.raises(ValueError, match="duration"):
            Duration.parse(bad)


class TestLoad:
    """Where the config comes from: file, ./syncd.yaml, or the embedded default."""

    def test_embedded_default(self, tmp_path: Path) -> None:
        config = load_config(None, environ={}, cwd=tmp_path)
        assert config.redis.url == "redis://localhost:6379/0"
        assert config.databases == {"default": "sqlite:///syncd.sqlite3"}
        assert config.http.listen == "127.0.0.1:8080"
        assert config.shutdown_grace == 30
        assert config.plugins is None

    def test_file_in_working_directory(self, tmp_path: Path) -> None:
        (tmp_path / "syncd.yaml").write_text("shutdown_grace: 5s\nlog_level: debug\n")
        config = load_config(None, environ={}, cwd=tmp_path)
        assert config.shutdown_grace == 5
        assert config.log_level == "debug"

    def test_design_example(self, tmp_path: Path) -> None:
        path = tmp_path / "c.yaml"
        path.write_text(
            """
redis:
  url: redis://localhost:6379/0
databases:
  default: sqlite:///syncd.sqlite3
  mysql: mysql://root@127.0.0.1:3306/test
  pg: postgresql://postgres@127.0.0.1:5432/test
http:
  listen: 127.0.0.1:8080
  token: null
shutdown_grace: 30s
log_level: info
plugins:
  demo: {enabled: true, database: mysql, interval: 1m}
"""
        )
        config = load_config(path, environ={})
        settings = resolve_plugins(config, SPECS)
        assert settings["demo"].database == "mysql"
        assert settings["demo"].options.interval == 60

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="no such file"):
            load_config(tmp_path / "nope.yaml", environ={})

    def test_invalid_yaml(self, tmp_path: Path) -> None:
        path = tmp_path / "c.yaml"
        path.write_text("redis: [unclosed\n")
        with pytest.raises(ConfigError, match="not valid YAML"):
            load_config(path, environ={})

    def test_log_level_env(self, tmp_path: Path) -> None:
        config = load_config(None, environ={"LOG_LEVEL": "DEBUG"}, cwd=tmp_path)
        assert config.log_level == "debug"


class TestEnvOverrides:
    """SYNCD_A__B=v reaches a.b, typed by the field it lands in."""

    def test_nesting_and_types(self, tmp_path: Path) -> None:
        environ = {
            "SYNCD_PLUGINS__DEMO__INTERVAL": "1m",
            "SYNCD_PLUGINS__DEMO__BATCH_SIZE": "42",
            "SYNCD_PLUGINS__DEMO__INSERT_MISSING": "true",
            "SYNCD_PLUGINS__DEMO__COLUMNS": "[a, b, c]",
            "SYNCD_HTTP__LISTEN": "127.0.0.1:9999",
            "SYNCD_INSTANCE": "007",
            "SYNCD_DISABLE_PLUGIN_AUTOLOAD": "1",
        }
        config = load_config(None, environ=environ, cwd=tmp_path)
        assert config.http.port == 9999
        assert config.instance == "007"
        options = resolve_plugins(config, SPECS)["demo"].options
        assert options == DemoOptions(interval=Duration(60), batch_size=42,
                                      columns=["a", "b", "c"], insert_missing=True)

    def test_override_wins_over_file(self) -> None:
        data = apply_env_overrides({"redis": {"url": "redis://a"}},
                                   {"SYNCD_REDIS__URL": "redis://b"})
        assert data == {"redis": {"url": "redis://b"}}

    def test_cannot_descend_into_a_value(self) -> None:
        with pytest.raises(ConfigError, match="log_level: set by SYNCD_LOG_LEVEL__X"):
            apply_env_overrides({"log_level": "info"}, {"SYNCD_LOG_LEVEL__X": "1"})


class TestErrors:
    """Each wrong value is one line naming the key and the problem."""

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            ({"shutdown_grace": "soon"}, "shutdown_grace: expected a duration"),
            ({"redis": {"url": 5, "pool_size": 0}}, "redis.pool_size: must be greater than 0"),
            ({"redis": {"urll": "x"}}, "redis.urll: unknown key (did you mean 'url'?)"),
            ({"log_level": "loud"}, "log_level: expected one of"),
            ({"http": {"listen": "nowhere"}}, "http.listen: expected host:port"),
            ({"http": {"listen": "0.0.0.0:8080"}}, "http.token: required when http.listen"),
            ({"databases": {"x": "oracle://db"}}, "databases.x:"),
            ({"databases": {}}, "databases: at least one"),
            ({"ledger_retention": "1h"}, "ledger_retention: must be at least 1d"),
            ({"redis": "localhost"}, "redis: must be a mapping"),
            ({"http": {"enabled": "perhaps"}}, "http.enabled: expected true or false"),
        ],
    )
    def test_core_keys(self, data: dict, message: str) -> None:
        with pytest.raises(ConfigError) as info:
            parse_config(data)
        assert message in str(info.value)
        assert "\n" not in str(info.value)

    @pytest.mark.parametrize(
        ("section", "message"),
        [
            ({"interval": "often"}, "plugins.demo.interval: expected a duration"),
            ({"batch_size": 0}, "plugins.demo.batch_size:"),
            ({"batch_size": "many"}, "plugins.demo.batch_size: expected an integer"),
            ({"tabel": "x"}, "plugins.demo.tabel: unknown key (did you mean 'table'?)"),
            ({"database": "nosuch"}, "plugins.demo.database: no database named 'nosuch'"),
            ({"columns": "upload"}, "plugins.demo.columns: expected a list"),
            ({"enabled": "sometimes"}, "plugins.demo.enabled: expected true or false"),
        ],
    )
    def test_plugin_keys(self, section: dict, message: str) -> None:
        config = parse_config({"plugins": {"demo": section}})
        with pytest.raises(ConfigError) as info:
            resolve_plugins(config, SPECS)
        assert message in str(info.value)

    def test_unknown_plugin(self) -> None:
        config = parse_config({"plugins": {"demoo": {}}})
        with pytest.raises(ConfigError, match=r"plugins\.demoo: no such plugin is installed"):
            resolve_plugins(config, SPECS)


class TestPluginSelection:
    """Which plugins run: all with the embedded default, the listed ones otherwise."""

    def test_embedded_default_runs_every_plugin(self) -> None:
        settings = resolve_plugins(Config(), SPECS)
        assert settings["demo"].enabled
        assert settings["demo"].database == "default"

    def test_embedded_default_leaves_out_what_cannot_run(self) -> None:
        """Every plugin on defaults means SQLite and one Redis: a plugin that
        declares it needs PostgreSQL (or a single Redis) is left disabled,
        not started to crash-loop."""
        settings = resolve_plugins(Config(), LIMITED)
        assert settings["demo"].enabled
        assert not settings["pgonly"].enabled
        assert settings["pgonly"].left_out == (
            "the pgonly plugin needs PostgreSQL, not SQLite ('default')")
        assert settings["nocluster"].enabled
        cluster = parse_config({"redis": {"url": "redis+cluster://127.0.0.1:7000"}})
        assert not resolve_plugins(cluster, LIMITED)["nocluster"].enabled

    @pytest.mark.parametrize(("config", "message"), [
        ({"plugins": {"pgonly": {}}},
         r"plugins\.pgonly\.database: the pgonly plugin needs PostgreSQL, "
         r"not SQLite \('default'\)"),
        ({"databases": {"default": "mysql://root@127.0.0.1/test"}, "plugins": {"pgonly": {}}},
         r"plugins\.pgonly\.database: the pgonly plugin needs PostgreSQL, not MySQL/MariaDB"),
        ({"redis": {"url": "redis+cluster://127.0.0.1:7000"}, "plugins": {"nocluster": {}}},
         r"redis\.url: the nocluster plugin does not run on Redis Cluster"),
    ])
    def test_asked_for_where_it_cannot_run(self, config: dict, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            resolve_plugins(parse_config(config), LIMITED)
        ok = parse_config({**config, "plugins": {"pgonly": {"enabled": False},
                                                 "nocluster": {"enabled": False}}})
        assert not any(s.enabled for s in resolve_plugins(ok, LIMITED).values())

    def test_listed_only(self) -> None:
        assert resolve_plugins(parse_config({"plugins": {}}), SPECS) == {}

    def test_disabled(self) -> None:
        settings = resolve_plugins(parse_config({"plugins": {"demo": {"enabled": False}}}), SPECS)
        assert not settings["demo"].enabled


class TestSecrets:
    """Passwords and tokens never print."""

    def test_redacted(self) -> None:
        config = parse_config({
            "redis": {"url": "redis://:hunter2@cache:6379/0"},
            "databases": {"pg": "postgresql://app:s3cret@db/app"},
            "http": {"listen": "0.0.0.0:8080", "token": "tok-123"},
        })
        text = repr(config.redacted()) + repr(config)
        assert "hunter2" not in text
        assert "s3cret" not in text
        assert "tok-123" not in text
        assert config.redacted()["databases"]["pg"] == "postgresql://app:***@db/app"
        assert isinstance(config.http.token, Secret)
        assert config.http.token == "tok-123"


def test_structure_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError, match=r"plugins\.demo: must be a mapping"):
        structure(DemoOptions, ["x"], "plugins.demo")
