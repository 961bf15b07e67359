"""``syncd dead-letters list|requeue|purge PLUGIN``: the operator's hands on the quarantine.

It talks to Redis directly with the plugin's config, so it works whether or
not the daemon runs (and while it runs: every requeue and purge is atomic
per item, so the two never trip over each other).
"""

from __future__ import annotations

import json
import sys
import time
import unicodedata
from typing import Any

import click
import trio

from syncd.errors import ConfigError, TransientError

#: Exit status when some selected items were refused or not found.
EXIT_PARTIAL = 1
EXIT_UNAVAILABLE = 3

_selection_options = [
    click.option("--all", "everything", is_flag=True, help="Every dead letter there is now."),
    click.option("--id", "ids", multiple=True, metavar="ID",
                 help="An entry's id, as `list` shows it (repeatable)."),
    click.option("--oldest", type=click.IntRange(1), default=None, metavar="N",
                 help="The N oldest dead letters."),
]


def _with_selection(fn: Any) -> Any:
    for option in reversed(_selection_options):
        fn = option(fn)
    return fn


def _quarantine(config_path: str | None, plugin: str) -> Any:
    """The plugin's `Quarantine`, from the same config the daemon reads."""
    from syncd.config import load_config, resolve_plugins, structure
    from syncd.logs import setup_logging
    from syncd.manager import discover, get_plugin_manager
    from syncd.quarantine import Quarantine
    from syncd.redis import RedisHandle

    config = load_config(config_path)
    setup_logging(config.log_level, config.log_format)
    pm = get_plugin_manager()
    found = discover(pm)
    if plugin not in found:
        raise ConfigError(f"plugins.{plugin}", "no such plugin is installed")
    settings = resolve_plugins(config, {name: d.spec for name, d in found.items()})
    if plugin in settings:
        options = settings[plugin].options
    else:  # not configured here: its defaults name its lists
        options = structure(found[plugin].spec.config, {}, f"plugins.{plugin}")
    redis = RedisHandle.from_url(config.redis.url, pool_size=2,
                                 client_name=f"syncd:{config.instance}:dead-letters")
    return Quarantine.for_plugin(pm, plugin, options, redis)


def _run(config_path: str | None, plugin: str, work: Any) -> Any:
    """Run ``work(quarantine)`` under Trio; config errors exit 2, Redis away exits 3."""
    try:
        box = _quarantine(config_path, plugin)
    except ConfigError as exc:
        click.echo(f"syncd: config error: {exc}", err=True)
        sys.exit(2)
    try:
        return trio.run(work, box)
    except TransientError as exc:
        click.echo(f"syncd: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    finally:
        box.redis.close()


def _selection(everything: bool, ids: tuple[str, ...], oldest: int | None) -> Any:
    from syncd.quarantine import Selection, SelectionError

    try:
        return Selection(all=everything, ids=tuple(dict.fromkeys(ids)), oldest=oldest)
    except SelectionError:
        raise click.UsageError("say which dead letters: --all, --id ID... or --oldest N "
                               "(exactly one)") from None


@click.group("dead-letters")
def dead_letters() -> None:
    """Inspect, requeue and purge a plugin's dead letters (quarantined items).

    Requeue puts each item back where it came from (a queue item onto its
    list, a counter's values onto its key) so the plugin takes it again, in
    one atomic step per item: it is either still a dead letter or back at
    its source, never both, never neither.
    """


@dead_letters.command("list")
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), default=None,
              envvar="SYNCD_CONFIG", help="YAML config file (as for `syncd serve`).")
@click.argument("plugin")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@click.option("--reasons", is_flag=True, help="Show the reasons grouped, with counts, instead.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(config_path: str | None, plugin: str, limit: int, offset: int, reasons: bool,
          as_json: bool) -> None:
    """List PLUGIN's dead letters, newest first: id, age, reason, payload."""

    async def work(box: Any) -> dict[str, Any]:
        stats = (await box.stats()).as_dict()
        if reasons:
            scanned, groups = await box.reasons()
            return {"plugin": plugin, "lists": list(box.lists), **stats, "scanned": scanned,
                    "reasons": groups}
        total, entries = await box.page(limit, offset)
        now = time.time()
        return {"plugin": plugin, "lists": list(box.lists), **stats, "total": total,
                "items": [box.describe(entry, now) for entry in entries]}

    answer = _run(config_path, plugin, work)
    if as_json:
        click.echo(json.dumps(answer, ensure_ascii=False, indent=2))
        return
    lists = ", ".join(answer["lists"]) or "no dead-letter list"
    age = answer["oldest_age_seconds"]
    click.echo(f"{plugin}: {answer['waiting']} dead letter(s) in {lists}"
               + (f", oldest {_age(age)} old" if age is not None else ""))
    if reasons:
        for group in answer["reasons"]:
            click.echo(f"{group['count']:>8}  {_printable(group['reason'], 110)}")
        if answer["scanned"] < answer["waiting"]:
            click.echo(f"(reasons counted over the newest {answer['scanned']})")
        return
    for item in answer["items"]:
        payload = item.get("payload")
        shown = _printable(payload, 60) if payload is not None else \
            f"(binary, base64) {item['payload_b64'][:44]}"
        click.echo(f"{item['id']}  {_age(item['age_seconds']):>6}  "
                   f"{_printable(item['reason'], 50):<50}  {shown}")
        if not item["requeue"]["ok"]:
            click.echo(f"{'':>24}cannot requeue: {_printable(item['requeue']['reason'], 90)}")
    shown = offset + len(answer["items"])
    if shown < answer["total"]:
        click.echo(f"({shown} of {answer['total']}; --offset {shown} for more)")


@dead_letters.command()
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), default=None,
              envvar="SYNCD_CONFIG", help="YAML config file (as for `syncd serve`).")
@click.argument("plugin")
@_with_selection
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def requeue(config_path: str | None, plugin: str, everything: bool, ids: tuple[str, ...],
            oldest: int | None, as_json: bool) -> None:
    """Put PLUGIN's selected dead letters back where they came from.

    Exits 1 if some could not be requeued (their reasons are printed; they
    stay dead letters) or were not found.
    """
    selection = _selection(everything, ids, oldest)

    async def work(box: Any) -> Any:
        return await box.requeue(selection)

    outcome = _run(config_path, plugin, work)
    _report(outcome.as_dict("requeued"), "requeued", as_json)
    if outcome.refused or outcome.missing:
        sys.exit(EXIT_PARTIAL)


@dead_letters.command()
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), default=None,
              envvar="SYNCD_CONFIG", help="YAML config file (as for `syncd serve`).")
@click.argument("plugin")
@_with_selection
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def purge(config_path: str | None, plugin: str, everything: bool, ids: tuple[str, ...],
          oldest: int | None, yes: bool, as_json: bool) -> None:
    """Delete PLUGIN's selected dead letters for good."""
    selection = _selection(everything, ids, oldest)
    if not yes:
        what = ("every dead letter" if everything else
                f"the {oldest} oldest dead letter(s)" if oldest else f"{len(ids)} dead letter(s)")
        click.confirm(f"Delete {what} of {plugin} for good?", abort=True)

    async def work(box: Any) -> Any:
        return await box.purge(selection)

    outcome = _run(config_path, plugin, work)
    _report(outcome.as_dict("purged"), "purged", as_json)
    if outcome.missing:
        sys.exit(EXIT_PARTIAL)


def _report(answer: dict[str, Any], verb: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(answer, ensure_ascii=False, indent=2))
        return
    line = f"{verb} {answer[verb]}"
    if answer["gone"]:
        line += f", {answer['gone']} already gone"
    if answer["refused_count"]:
        line += f", {answer['refused_count']} refused"
    if answer["missing"]:
        line += f", {len(answer['missing'])} not found"
    click.echo(line)
    for refused in answer["refused"]:
        click.echo(f"  {refused['id']}: {_printable(refused['reason'], 100)}")
    for missing in answer["missing"]:
        click.echo(f"  {_printable(missing, 40)}: no such dead letter")


def _printable(text: str, width: int) -> str:
    """``text`` on one line, control characters escaped (a payload must not
    drive the operator's terminal), cut to ``width``."""
    out = "".join(
        ch if ch == " " or not unicodedata.category(ch).startswith(("C", "Z"))
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )
    return out if len(out) <= width else out[: width - 1] + "…"


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
