"""Client-side commands: `streams …`, `workers …`, `status`, `events`.

They talk to a running server over the v1 API through `streamorch.client.AdminClient`:
`--server URL` (env STREAMORCH_SERVER) and `--token` (env STREAMORCH_ADMIN_TOKEN: the
admin token, the same variable the server reads; STREAMORCH_TOKEN is read when it is
unset). Output is a table for people, or the server's JSON with `--json`. A server error
is printed as the server's message with the likely fix and exits 1; no server reachable,
or a URL that can never work, exits 2. Never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from streamorch.cli import hints
from streamorch.client import errors
from streamorch.client.admin import AdminClient

T = TypeVar("T")

DEFAULT_SERVER = "http://127.0.0.1:8001"
IMPORT_CHUNK = 5_000

Server = Annotated[
    str,
    typer.Option(
        "--server", envvar="STREAMORCH_SERVER", help="Orchestrator URL(s), comma-separated."
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=["STREAMORCH_ADMIN_TOKEN", "STREAMORCH_TOKEN"],
        help="The server's admin token.",
        show_envvar=True,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the server's JSON.")]

streams_app = typer.Typer(help="The stream catalog.", no_args_is_help=True)
workers_app = typer.Typer(help="The worker fleet.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the client-side commands to the `streamorch` command."""
    app.add_typer(streams_app, name="streams")
    app.add_typer(workers_app, name="workers")
    app.command("status")(status)
    app.command("events")(events)


# -- plumbing -------------------------------------------------------------------------


def _call(server: str, token: str | None, action: Callable[[AdminClient], Awaitable[T]]) -> T:
    async def run() -> T:
        async with AdminClient(server, token=token) as admin:
            return await action(admin)

    problem = hints.url_problem(server)
    if problem is not None:
        _err().print(f"error: --server: {problem}", markup=False, highlight=False)
        raise typer.Exit(2)
    try:
        return asyncio.run(run())
    except errors.APIError as exc:
        message = hints.api_hint(server, exc, hints.ADMIN_AUTH_FIX)
        _err().print(f"error: {message}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    except errors.TransportError as exc:
        message = hints.transport_hint(server, exc)
        _err().print(f"error: {message}", markup=False, highlight=False)
        raise typer.Exit(2) from None


def _out() -> Console:
    # Piped output is not cut to 80 columns: scripts and logs read it whole.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 240)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


def _pairs(values: list[str], option: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{value!r}: use KEY=VALUE", param_hint=option)
        out[key] = val
    return out


def _labels(value: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((value or {}).items()))


def _table(*columns: str) -> Table:
    return Table(*columns, box=None, pad_edge=False, header_style="bold")


def _stream_row(s: dict[str, Any]) -> list[str]:
    a = s.get("assignment") or {}
    state = a.get("state", "unassigned" if s["enabled"] else "disabled")
    return [s["key"], a.get("worker") or "-", state, str(s["weight"]), s["url"]]


# -- streams --------------------------------------------------------------------------


@streams_app.command("list")
def streams_list(
    server: Server = DEFAULT_SERVER,
    token: Token = None,
    state: Annotated[str | None, typer.Option(help="assigned, unassigned or moving.")] = None,
    worker: Annotated[str | None, typer.Option(help="Only streams on this worker.")] = None,
    as_json: AsJson = False,
) -> None:
    """Every stream with where it runs."""

    async def fetch(admin: AdminClient) -> list[dict[str, Any]]:
        return [s async for s in admin.iter_streams(state=state, worker=worker)]

    items = _call(server, token, fetch)
    if as_json:
        _json(items)
        return
    table = _table("key", "worker", "state", "weight", "url")
    for s in items:
        table.add_row(*_stream_row(s))
    _out().print(table)
    _out().print(f"{len(items)} stream(s)")


@streams_app.command("get")
def streams_get(
    key: str, server: Server = DEFAULT_SERVER, token: Token = None, as_json: AsJson = False
) -> None:
    """One stream, its assignment, and why it is unplaced if it is."""
    s = _call(server, token, lambda admin: admin.get_stream(key))
    if as_json:
        _json(s)
        return
    a = s.get("assignment") or {}
    table = _table("field", "value")
    for name, value in [
        ("key", s["key"]),
        ("url", s["url"]),
        ("weight", s["weight"]),
        ("enabled", s["enabled"]),
        ("labels", _labels(s["labels"])),
        ("requires", _labels(s["requires"])),
        ("worker", a.get("worker") or "-"),
        ("state", a.get("state") or "unassigned"),
        ("token", a.get("token", "-")),
        ("since", a.get("since", "-")),
        ("reason", s.get("reason") or a.get("reason") or "-"),
    ]:
        table.add_row(name, str(value))
    _out().print(table)


@streams_app.command("put")
def streams_put(
    key: str,
    url: Annotated[str, typer.Option(help="The stream's URL.")],
    server: Server = DEFAULT_SERVER,
    token: Token = None,
    weight: Annotated[int, typer.Option(min=1, help="Capacity units it costs.")] = 1,
    label: Annotated[list[str], typer.Option(help="KEY=VALUE, repeatable.")] = [],  # noqa: B006
    require: Annotated[
        list[str], typer.Option(help="KEY=VALUE a worker must have, repeatable.")
    ] = [],  # noqa: B006
    disabled: Annotated[
        bool, typer.Option("--disabled", help="Define it, run it nowhere.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Create or replace a stream."""
    labels, requires = _pairs(label, "--label"), _pairs(require, "--require")
    s = _call(
        server,
        token,
        lambda admin: admin.put_stream(
            key, url=url, weight=weight, labels=labels, requires=requires, enabled=not disabled
        ),
    )
    if as_json:
        _json(s)
        return
    _out().print(f"stream {s['key']} saved", markup=False)


@streams_app.command("delete")
def streams_delete(key: str, server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Delete a stream; its worker is told to stop it."""
    _call(server, token, lambda admin: admin.delete_stream(key))
    _out().print(f"stream {key} deleted", markup=False)


@streams_app.command("explain")
def streams_explain(
    key: str, server: Server = DEFAULT_SERVER, token: Token = None, as_json: AsJson = False
) -> None:
    """Why the stream runs where it runs, or why it runs nowhere."""
    answer = _call(server, token, lambda admin: admin.explain(key))
    if as_json:
        _json(answer)
        return
    _out().print(answer["explanation"], markup=False)


@streams_app.command("import")
def streams_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    server: Server = DEFAULT_SERVER,
    token: Token = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="The file is the whole catalog: delete the rest.")
    ] = False,
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv or json (default: from the extension).")
    ] = None,
    chunk: Annotated[int, typer.Option(min=1, help="Streams per request (upsert).")] = IMPORT_CHUNK,
    as_json: AsJson = False,
) -> None:
    """Import streams from CSV or JSON through the bulk API, and print what changed.

    Columns / fields: key (or id), url, optional weight, labels, requires (JSON objects),
    enabled. Upserts go in chunks; `--replace` goes as one request, since a replace in
    chunks would delete what the other chunks add.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from streamorch.domain.catalog import RowError, streams_from_rows

    kind = (fmt or file.suffix.lstrip(".")).lower()
    if kind not in ("csv", "json"):
        raise typer.BadParameter(
            f"cannot tell the format of {file.name}: pass --format csv or json"
        )
    try:
        streams = streams_from_rows(_read(file, kind))
    except RowError as exc:
        _err().print(f"error: {file.name}: {exc}; nothing was imported", markup=False)
        raise typer.Exit(1) from None
    except (ValueError, UnicodeDecodeError) as exc:
        _err().print(f"error: {file.name} is not valid {kind}: {exc}", markup=False)
        raise typer.Exit(1) from None

    size = len(streams) if replace else chunk
    batches = [streams[i : i + size] for i in range(0, len(streams), size)] or [[]]
    mode = "replace" if replace else "upsert"
    totals = {"created": 0, "updated": 0, "deleted": 0}

    async def send(admin: AdminClient) -> None:
        with Progress(
            TextColumn("importing"),
            BarColumn(),
            MofNCompleteColumn(),
            console=_err(),
            transient=True,
        ) as progress:
            task = progress.add_task("import", total=len(streams))
            for batch in batches:
                counts = await admin.bulk(batch, mode=mode)
                for name in totals:
                    totals[name] += counts.get(name, 0)
                progress.advance(task, len(batch))

    _call(server, token, send)
    report = {**totals, "unchanged": len(streams) - totals["created"] - totals["updated"]}
    if as_json:
        _json(report)
        return
    _out().print(
        f"{len(streams)} stream(s) from {file.name} ({mode}): {report['created']} created, "
        f"{report['updated']} updated, {report['deleted']} deleted, "
        f"{report['unchanged']} unchanged",
        markup=False,
    )


def _read(file: Path, kind: str) -> list[dict[str, Any]]:
    text = file.read_text(encoding="utf-8-sig")
    if kind == "csv":
        return list(csv.DictReader(text.splitlines()))
    data = json.loads(text)
    if isinstance(data, dict) and isinstance(data.get("streams"), list):
        data = data["streams"]
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ValueError('expected a list of objects, or {"streams": [...]}')
    return data


# -- workers --------------------------------------------------------------------------


@workers_app.command("list")
def workers_list(
    server: Server = DEFAULT_SERVER,
    token: Token = None,
    status_: Annotated[
        str,
        typer.Option(
            "--status",
            help="live (active and draining), departed (left and expired), all, or one status.",
        ),
    ] = "live",
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 1000,
    as_json: AsJson = False,
) -> None:
    """Workers with their load, in name order (live ones unless --status says otherwise)."""

    async def fetch(admin: AdminClient) -> tuple[list[dict[str, Any]], bool]:
        items: list[dict[str, Any]] = []
        async for w in admin.iter_workers(status=status_, page=min(limit + 1, 1000)):
            if len(items) == limit:
                return items, True
            items.append(w)
        return items, False

    items, more = _call(server, token, fetch)
    if as_json:
        _json(items)
        return
    table = _table(
        "name",
        "kind",
        "status",
        "load",
        "streams",
        "pinned",
        "labels",
        "last heartbeat",
        "lease until",
        "id",
    )
    for w in items:
        kind = w.get("kind", "sdk")
        if w.get("generation"):
            kind += f" ({w['generation']})"
        table.add_row(
            w["name"],
            kind,
            w["status"],
            f"{w['load']}/{w['capacity']}",
            str(w["streams"]),
            str(len(w.get("pinned_streams") or [])) if w.get("kind") == "original" else "-",
            _labels(w.get("labels")),
            w["last_heartbeat"],
            w.get("lease_expires_at", ""),
            w["worker_id"],
        )
    _out().print(table)
    shown = f"{len(items)} worker(s) ({status_})"
    _out().print(shown + (f"; more than {limit}: raise --limit to see them" if more else ""))


Worker = Annotated[str, typer.Argument(help="The worker's name or id.")]


@workers_app.command("drain")
def workers_drain(worker: Worker, server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Move every stream off a worker and give it nothing new."""

    async def drain(admin: AdminClient) -> str:
        found = await admin.get_worker(worker)
        await admin.drain_worker(found["worker_id"])
        return str(found["name"])

    name = _call(server, token, drain)
    _out().print(f"worker {name} is draining: its streams move away", markup=False)


@workers_app.command("forget")
def workers_forget(worker: Worker, server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Delete a departed (left or expired) worker now; its events keep its name.

    Departed workers are forgotten anyway after WORKER_RETENTION (default one day).
    """

    async def forget(admin: AdminClient) -> str:
        found = await admin.get_worker(worker)
        await admin.forget_worker(found["worker_id"])
        return str(found["name"])

    name = _call(server, token, forget)
    _out().print(f"worker {name} forgotten", markup=False)


# -- cluster --------------------------------------------------------------------------


def status(server: Server = DEFAULT_SERVER, token: Token = None, as_json: AsJson = False) -> None:
    """Streams, workers, capacity, balance and the reconciler at a glance."""
    s = _call(server, token, lambda admin: admin.status())
    if as_json:
        _json(s)
        return
    streams, workers, balance = s["streams"], s["workers"], s["balance"]
    rec = s["reconciler"]
    table = _table("", "")
    table.add_row("streams", ", ".join(f"{v} {k}" for k, v in streams.items()))
    table.add_row("workers", ", ".join(f"{v} {k}" for k, v in workers.items()))
    table.add_row("load", f"{s['load']}/{s['capacity']} ({s['load_percent']}%)")
    table.add_row(
        "balance",
        f"max {balance['max_utilisation']:.0%}, mean {balance['mean_utilisation']:.0%}",
    )
    table.add_row(
        "reconciler",
        f"last pass {rec.get('last_pass_at') or 'never'}"
        + (f" ({rec['last_duration_ms']} ms)" if rec.get("last_duration_ms") is not None else ""),
    )
    _out().print(table)


def _worker_of(event: dict[str, Any]) -> str:
    name = event["worker"] or "-"
    if event.get("worker_kind") == "original":
        name += f" (original {event.get('worker_generation') or ''})".replace(" )", ")")
    return name


def events(
    server: Server = DEFAULT_SERVER,
    token: Token = None,
    since: Annotated[
        int | None, typer.Option(min=0, help="Events after this id, oldest first.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    stream: Annotated[str | None, typer.Option(help="Only this stream's events.")] = None,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Print the latest, then each new event as it happens."),
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="With --follow: seconds between polls.")
    ] = 1.0,
    as_json: AsJson = False,
) -> None:
    """The log of changes (assigned, revoked, stopped, worker_joined …), newest first.

    `--since ID` lists what came after that id, oldest first. `--follow` prints the
    latest `--limit` events, oldest first, then every new one until Ctrl-C (with
    `--json`: one JSON object per line).
    """
    newest = since is None
    body = _call(
        server,
        token,
        lambda admin: admin.events(
            since=since or 0, limit=limit, stream=stream, newest=newest or follow
        ),
    )
    items = body["items"]
    if not follow:
        if as_json:
            _json(body)
            return
        _out().print(_events_table(items))
        return
    seen = max((e["id"] for e in items), default=since or 0)
    _print_events(sorted(items, key=lambda e: e["id"]), as_json)

    async def tail(admin: AdminClient) -> None:
        nonlocal seen
        while True:
            page = await admin.events(since=seen, limit=1000, stream=stream)
            _print_events(page["items"], as_json)
            seen = page.get("next_since") or seen
            if len(page["items"]) < 1000:
                await asyncio.sleep(interval)

    with contextlib.suppress(KeyboardInterrupt):
        _call(server, token, tail)


def _events_table(items: list[dict[str, Any]]) -> Table:
    table = _table("id", "at", "kind", "stream", "worker", "reason")
    for e in items:
        table.add_row(*_event_cells(e))
    return table


def _event_cells(e: dict[str, Any]) -> list[str]:
    return [
        str(e["id"]),
        e["at"],
        e["kind"],
        e["stream"] or "-",
        _worker_of(e),
        e["reason"] or "-",
    ]


def _print_events(items: list[dict[str, Any]], as_json: bool) -> None:
    for e in items:
        if as_json:
            typer.echo(json.dumps(e, sort_keys=True))
        else:
            typer.echo("  ".join(_event_cells(e)))
    sys.stdout.flush()
