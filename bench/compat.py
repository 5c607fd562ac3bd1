"""Original-protocol figures: an instance's failover time at the default settings, and
streams moved away from live instances while SDK workers churn beside them.

Starts embedded PostgreSQL + Valkey and one `streamorch serve` with the default timing
(COMPAT_LEASE_TTL 150 s, RECONCILE_INTERVAL 1 s, SDK LEASE_TTL 10 s), and drives simulated
instances of the original clients (tests/original_clients.py: C1, C2, C3 with their real
30 s heartbeats and 3 s pulls, bugs included) and SDK workers (tests/support/simworker.py) over
real HTTP, all in this process.

failover: a C1 instance holding 20 streams is killed right after a heartbeat (no release,
as on SIGKILL); a C3 instance with room and an SDK worker with room for 10 survive. Timed
from the dead instance's last heartbeat to each of its streams running again: on the SDK
worker (at its lease end) and on the C3 instance (its next pull). Takes about 3 minutes.

churn: three instances (C1, C2, C3, 20 streams each) and SDK workers share --streams
streams; every --period s an SDK worker joins, is killed or leaves, for --churn s. Counts
`revoked`/`stopped`/`moved` events of the live instances (the goal: 0) and the moves among
SDK workers, and checks that no stream ever ran on two of them at once.

    .venv/bin/python bench/compat.py [--streams 200] [--churn 60] [--period 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from typing import Any

import httpx
from _servers import Stack, machine, run_bench  # also puts the repository on sys.path
from tests.original_clients import C1, C2, C3, Timing, overlaps
from tests.support.fleet import Fleet, all_events
from tests.support.waiting import wait_until

REAL = Timing(heartbeat=30.0, pull=3.0, retry_delays=(1.0, 2.0))


async def catalog(api: httpx.AsyncClient, n: int) -> None:
    items = [{"key": str(i), "url": f"http://radio/{i}"} for i in range(1, n + 1)]
    response = await api.post("/v1/streams/bulk", json={"mode": "replace", "streams": items})
    response.raise_for_status()


async def failover(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as api:
        await catalog(api, 30)
        dead = await C1(url, "dead", max_streams=20, timing=REAL).start()
        survivor = await C3(url, "survivor", max_streams=30, timing=REAL).start()
        async with Fleet(url, capacity=10) as fleet:
            sdk = (await fleet.start(1, prefix="sdk"))[0]
            held = set(dead.running)
            beats = dead.heartbeats
            print("waiting for the instance's first heartbeat (30 s)…")
            await wait_until(lambda: dead.heartbeats > beats, timeout=60, what="a heartbeat")
            last_beat = time.monotonic()
            await dead.kill()
            print("killed after a heartbeat; its lease ends 150 s later…")
            on_sdk: dict[int, float] = {}
            on_old: dict[int, float] = {}

            def settled() -> bool:
                now = time.monotonic() - last_beat
                for key in sdk.running:
                    if int(key) in held:
                        on_sdk.setdefault(int(key), now)
                for i in survivor.running & held:
                    on_old.setdefault(i, now)
                return set(on_sdk) | set(on_old) == held

            await wait_until(settled, timeout=400, interval=0.05, what="failover")
            await survivor.kill()
    return {
        "streams": len(held),
        "to_sdk_workers": len(on_sdk),
        "to_instances": len(on_old),
        "sdk_after_last_heartbeat_s": _span(on_sdk.values()),
        "instance_after_last_heartbeat_s": _span(on_old.values()),
    }


def _span(values: Any) -> list[float] | None:
    values = list(values)
    return [round(min(values), 2), round(max(values), 2)] if values else None


async def churn(url: str, streams: int, seconds: float, period: float) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as api:
        await catalog(api, streams)
        old = [
            await C1(url, "c1", max_streams=20, timing=REAL).start(),
            await C2(url, "c2", max_streams=20, timing=REAL).start(),
            await C3(url, "c3", max_streams=20, timing=REAL).start(),
        ]
        before = {o.server_id: set(o.running) for o in old}
        worst_overlap = 0
        async with Fleet(url, capacity=max(streams // 3, 10)) as fleet:
            await fleet.start(4, prefix="sdk")
            rng = random.Random(7)
            joined = 4
            end = time.monotonic() + seconds
            actions = {"joined": 0, "killed": 0, "left": 0}
            while time.monotonic() < end:
                await asyncio.sleep(period)
                live = fleet.live
                action = rng.choice(["join", "kill", "leave"]) if len(live) > 2 else "join"
                if action == "join":
                    await fleet.add(f"sdk{joined:03d}")
                    joined += 1
                    actions["joined"] += 1
                elif action == "kill":
                    await rng.choice(live).kill()
                    actions["killed"] += 1
                else:
                    await rng.choice(live).stop()
                    actions["left"] += 1
                runs_old = {str(i) for o in old for i in o.running}
                both = set(fleet.owners()) & runs_old
                worst_overlap = max(worst_overlap, len(both), len(overlaps(old)))
            events = await all_events(api)
            problems = fleet.problems()
        after = {o.server_id: set(o.running) for o in old}
        for o in old:
            await o.kill()
    names = {o.server_id for o in old}
    off_old = [
        e for e in events if e["worker"] in names and e["kind"] in ("revoked", "stopped", "moved")
    ]
    return {
        "streams": streams,
        "churn_s": seconds,
        "sdk_actions": actions,
        "moves_among_sdk_workers": sum(
            1 for e in events if e["kind"] == "revoked" and e["worker"] not in names
        ),
        "moved_off_live_instances": len(off_old),
        # What each instance runs, from the instance's side: changes come from the
        # clients' own bugs only (none of them was told anything).
        "instances_changed": {
            o.server_id: {
                "before": len(before[o.server_id]),
                "after": len(after[o.server_id]),
                "handed": o.handed,
            }
            for o in old
            if after[o.server_id] != before[o.server_id]
        },
        "streams_on_two_owners_max": worst_overlap,
        "sdk_problems": problems[:5],
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": machine()}
    # One server (and database) per run: instances killed in one run keep their lease.
    with Stack() as stack:
        server = stack.serve(LOG_LEVEL="WARNING")
        result["churn"] = asyncio.run(churn(server.url, args.streams, args.churn, args.period))
    if not args.skip_failover:
        with Stack() as stack:
            server = stack.serve(LOG_LEVEL="WARNING")
            result["failover"] = asyncio.run(failover(server.url))
    return result


def report(result: dict[str, Any]) -> None:
    c = result["churn"]
    print(
        f"churn: {c['streams']} streams, {c['churn_s']} s, SDK {c['sdk_actions']}: "
        f"{c['moved_off_live_instances']} moved off live instances, "
        f"{c['moves_among_sdk_workers']} moves among SDK workers, "
        f"max streams on two owners {c['streams_on_two_owners_max']}"
    )
    f = result.get("failover")
    if f:
        print(
            f"failover of a dead instance ({f['streams']} streams): SDK worker "
            f"{f['sdk_after_last_heartbeat_s']} s, instance {f['instance_after_last_heartbeat_s']} s "
            "after its last heartbeat (COMPAT_LEASE_TTL 150 s)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--churn", type=float, default=60.0)
    parser.add_argument("--period", type=float, default=5.0)
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    return run_bench(lambda: measure(args), report, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
