"""Slow clients against the connection limits: /ready latency while clients trickle headers.

Starts embedded PostgreSQL + Valkey and one server (bench/_servers.py). Measures /ready
(sequential requests on one kept-alive connection) first alone, then while --clients
connections each send one header byte every --interval seconds, and reports how long
the server took to cut each slow client off (HTTP_HEADER_TIMEOUT, 10 s by default) and
how many were still open at the end.

    .venv/bin/python bench/slow_clients.py [--clients 500] [--interval 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from _servers import BenchError, Stack, machine, percentile, run_bench


async def _trickle(port: int, interval: float, cut: list[float]) -> None:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        cut.append(float("nan"))
        return
    try:
        for byte in b"GET /ready HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1000:
            writer.write(bytes([byte]))
            try:
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), interval) == b"":
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                break
        cut.append(time.monotonic() - started)
    finally:
        writer.close()


async def _ready(client: httpx.AsyncClient, requests: int) -> dict[str, float]:
    latencies = []
    for _ in range(requests):
        began = time.perf_counter()
        response = await client.get("/ready")
        latencies.append((time.perf_counter() - began) * 1000)
        if response.status_code != 200:
            raise BenchError(f"/ready answered {response.status_code}: {response.text[:200]}")
    latencies.sort()
    return {"p50": round(percentile(latencies, 50), 2), "p99": round(percentile(latencies, 99), 2)}


async def _measure(port: int, clients: int, interval: float, requests: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        alone = await _ready(client, requests)
        cut: list[float] = []
        tasks = [asyncio.create_task(_trickle(port, interval, cut)) for _ in range(clients)]
        await asyncio.sleep(1.0)  # let them connect
        during = await _ready(client, requests)
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    cut_s = sorted(x for x in cut if x == x)
    return {
        "ready_alone_ms": alone,
        "ready_with_slow_clients_ms": during,
        "slow_clients_cut_after_s": {
            "min": round(cut_s[0], 2),
            "median": round(percentile(cut_s, 50), 2),
            "max": round(cut_s[-1], 2),
        },
        "slow_clients_not_connected": len(cut) - len(cut_s),
    }


def run(clients: int, interval: float, requests: int, server_env: dict[str, str]) -> dict:
    with Stack() as stack:
        server = stack.serve(**{"LOG_LEVEL": "WARNING", **server_env})
        figures = asyncio.run(_measure(server.port, clients, interval, requests))
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": machine(),
        "clients": clients,
        "interval_s": interval,
        "requests": requests,
        "server_env": server_env,
        **figures,
        "command": " ".join(["bench/slow_clients.py", *sys.argv[1:]]),
    }


def report(result: dict) -> None:
    m = result["machine"]
    print(f"slow clients benchmark — {result['date']}, {m['cores']} cores, {m['cpu']}")
    for name, key in (("alone", "ready_alone_ms"), ("slow clients", "ready_with_slow_clients_ms")):
        r = result[key]
        print(f"/ready {name:<13} p50 {r['p50']:7.2f} ms   p99 {r['p99']:7.2f} ms")
    c = result["slow_clients_cut_after_s"]
    print(
        f"{result['clients']} slow clients cut after {c['min']} s (min), {c['median']} s "
        f"(median), {c['max']} s (max); not connected: {result['slow_clients_not_connected']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between bytes")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE", help="for the server"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    server_env = dict(item.split("=", 1) for item in args.server_env)
    return run_bench(
        lambda: run(args.clients, args.interval, args.requests, server_env),
        report,
        as_json=args.json,
    )


if __name__ == "__main__":
    sys.exit(main())
