"""Health and degradation figures of one `streamorch serve` process.

Against a throw-away embedded PostgreSQL and Valkey (bench/_servers.py), with one
registered worker heartbeating every 0.5 s from this script:

  /ready p99          --requests sequential GET /ready on one keep-alive connection,
                      with everything up, then with Redis stopped; and the floor, the
                      same for an unknown path (HTTP stack, middleware, router: a 404).
  Redis stopped       valkey stopped → /health says `degraded`;
  Redis back          valkey started → /health says `healthy`;
  PostgreSQL stopped  pg_ctl stop returned → /ready 503, and → /health `unhealthy`;
  PostgreSQL back     pg_ctl start returned → /ready 200, → /health `healthy`, and → the
                      worker's heartbeat answered 200 again (full recovery).
                      PostgreSQL stays down --outage seconds.

Valkey is stopped with SIGTERM, PostgreSQL with `pg_ctl stop -m fast` (both close their
connections, as a crash or a restart does). Each outage is repeated --rounds times. Polls every 10 ms, so times are ±10 ms.
Goals (issue 4): /ready p99 ≤ 10 ms up and ≤ 50 ms with Redis down; detection ≤ 2 s;
recovery ≤ 2 s.

    .venv/bin/python bench/health.py [--requests 2000] [--rounds 3] [--outage 5] [--json]
        [--server-env NAME=VALUE …]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from _servers import BenchError, Stack, machine, percentile, run_bench

POLL_S = 0.01
DEADLINE_S = 120.0
GOALS_MS = {"ready_p99_up": 10.0, "ready_p99_redis_down": 50.0}
GOALS_S = {"detect": 2.0, "recover": 2.0}


def latencies(client: httpx.Client, url: str, n: int, expect: int = 200) -> list[float]:
    for _ in range(50):  # warm-up
        client.get(url)
    out = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.get(url)
        out.append((time.perf_counter() - started) * 1000)
        if response.status_code != expect:
            raise BenchError(f"{url} answered {response.status_code}: {response.text}")
    return sorted(out)


def until(predicate: Callable[[], bool], what: str) -> float:
    """Seconds until `predicate` holds (polled every POLL_S)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > DEADLINE_S:
            raise BenchError(f"{what}: not within {DEADLINE_S:g} s")
        time.sleep(POLL_S)
    return time.monotonic() - started


def health_is(client: httpx.Client, url: str, status: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            body = client.get(url + "/health", timeout=5).json()
        except (httpx.TransportError, ValueError):
            return False
        # Top-level status stays "healthy" while degraded; `degraded` lists what is impaired.
        level = "degraded" if body.get("degraded") else body["status"]
        return level == status

    return check


def ready_is(client: httpx.Client, url: str, code: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return client.get(url + "/ready", timeout=5).status_code == code
        except httpx.TransportError:
            return False

    return check


class Heartbeats(threading.Thread):
    """One worker heartbeating every 0.5 s; remembers when the last 200 came."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, timeout=5)
        worker = self.client.post("/v1/workers/register", json={"name": "bench-w1"}).json()
        self.path = f"/v1/workers/{worker['worker_id']}/heartbeat"
        self.headers = {"X-Worker-Secret": worker["secret"]}
        self.body = {"incarnation": worker["incarnation"], "running": []}
        self.last_ok = time.monotonic()
        self.statuses: dict[int, int] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            try:
                code = self.client.post(self.path, json=self.body, headers=self.headers).status_code
            except httpx.TransportError:
                code = 0
            self.statuses[code] = self.statuses.get(code, 0) + 1
            if code == 200:
                self.last_ok = time.monotonic()


def run(requests: int, rounds: int, outage: float, server_env: dict[str, str]) -> dict:
    figures: dict[str, list[float]] = {
        "redis_stopped_to_health_degraded_s": [],
        "redis_back_to_health_healthy_s": [],
        "postgres_stopped_to_ready_503_s": [],
        "postgres_stopped_to_health_unhealthy_s": [],
        "postgres_back_to_ready_200_s": [],
        "postgres_back_to_health_healthy_s": [],
        "postgres_back_to_heartbeat_200_s": [],
    }
    with Stack() as stack:
        server = stack.serve(**{"LOG_LEVEL": "WARNING", **server_env})
        url = server.url
        with httpx.Client(timeout=5) as client:
            # The floor: an unknown path costs the HTTP stack, middleware and router only.
            floor = latencies(client, url + "/no-such-path", requests, expect=404)
            up = latencies(client, url + "/ready", requests)
            beats = Heartbeats(url)
            beats.start()
            for _ in range(rounds):
                stack.valkey.stop()
                figures["redis_stopped_to_health_degraded_s"].append(
                    until(health_is(client, url, "degraded"), "degraded")
                )
                stack.valkey.start()
                figures["redis_back_to_health_healthy_s"].append(
                    until(health_is(client, url, "healthy"), "healthy")
                )
            stack.valkey.stop()
            until(health_is(client, url, "degraded"), "degraded")
            redis_down = latencies(client, url + "/ready", requests)
            stack.valkey.start()
            until(health_is(client, url, "healthy"), "healthy")

            for _ in range(rounds):
                stack.pg.stop()
                stopped = time.monotonic()
                figures["postgres_stopped_to_ready_503_s"].append(
                    until(ready_is(client, url, 503), "/ready 503")
                )
                until(health_is(client, url, "unhealthy"), "unhealthy")
                figures["postgres_stopped_to_health_unhealthy_s"].append(time.monotonic() - stopped)
                time.sleep(max(0.0, outage - (time.monotonic() - stopped)))
                stack.pg.start(timeout=60)
                back = time.monotonic()
                until(ready_is(client, url, 200), "/ready 200")
                figures["postgres_back_to_ready_200_s"].append(time.monotonic() - back)
                until(health_is(client, url, "healthy"), "healthy")
                figures["postgres_back_to_health_healthy_s"].append(time.monotonic() - back)
                until(lambda back=back: beats.last_ok > back, "heartbeat 200")
                figures["postgres_back_to_heartbeat_200_s"].append(beats.last_ok - back)
            beats.stopping.set()
            beats.join()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "requests": requests,
        "rounds": rounds,
        "outage_s": outage,
        "server_env": server_env,
        "ready_ms": {
            "floor_404": {
                "p50": round(percentile(floor, 50), 2),
                "p99": round(percentile(floor, 99), 2),
            },
            "up": {"p50": round(percentile(up, 50), 2), "p99": round(percentile(up, 99), 2)},
            "redis_down": {
                "p50": round(percentile(redis_down, 50), 2),
                "p99": round(percentile(redis_down, 99), 2),
            },
        },
        "outages_s": {
            k: {
                "min": round(min(v), 3),
                "median": round(statistics.median(v), 3),
                "max": round(max(v), 3),
            }
            for k, v in figures.items()
        },
        "heartbeat_answers": beats.statuses,
    }


def report(result: dict) -> None:
    m = result["machine"]
    print(f"health benchmark — {result['date']}, {m['cores']} cores, {m['cpu']}")
    for name, key in (
        ("floor (a 404)", "floor_404"),
        ("everything up", "up"),
        ("Redis down", "redis_down"),
    ):
        r = result["ready_ms"][key]
        print(f"/ready {name:<14} p50 {r['p50']:7.2f} ms   p99 {r['p99']:7.2f} ms")
    print(f"{'outage measure':<42} {'min':>7} {'median':>7} {'max':>7}")
    for name, v in result["outages_s"].items():
        print(f"{name:<42} {v['min']:7.3f} {v['median']:7.3f} {v['max']:7.3f}")
    print(f"heartbeat answers by status: {result['heartbeat_answers']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--outage", type=float, default=5.0, help="PostgreSQL down for (s)")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE", help="for the server"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    server_env = dict(item.split("=", 1) for item in args.server_env)
    return run_bench(
        lambda: run(args.requests, args.rounds, args.outage, server_env), report, as_json=args.json
    )


if __name__ == "__main__":
    sys.exit(main())
