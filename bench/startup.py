"""Start-up and stop times of `start-orchestrator.sh` with the embedded services.

Measures, against a throw-away data directory:

  first start   the very first start (fresh data directory, includes initdb): spawn of
                the script → first 200 from GET /ready; once.
  cold start    the same with dependencies installed and the data directory initialised
                (the state of every later start); --runs times.
  clean stop    SIGTERM → the script's process has exited 0 and no process whose command
                line or working directory lies in the data directory is left; --runs times.

Goals (docs/benchmarks.md): cold start ≤ 3 s, clean stop ≤ 2 s; a goal counts as met when
every run is within it (the max, not the median).

    .venv/bin/python bench/startup.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the process helpers are shared with the end-to-end tests
from _servers import machine, run_bench  # noqa: E402  (bench/ is on sys.path when run as a script)
from tests.e2e.harness import clean_env, free_port, processes_mentioning  # noqa: E402

SCRIPT = ROOT / "start-orchestrator.sh"
GOALS_S = {"cold_start": 3.0, "clean_stop": 2.0}
POLL_S = 0.01
TIMEOUT_S = 120.0


class BenchError(RuntimeError):
    pass


class Orchestrator:
    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def env(self, port: int) -> dict[str, str]:
        return clean_env(STREAMORCH_DATA_DIR=str(self.data_dir), ORCHESTRATOR_PORT=str(port))

    def start(self) -> float:
        """Spawn the script; seconds until GET /ready first answers 200."""
        self.runs += 1
        port = free_port()
        self.stderr = self.log_dir / f"run{self.runs}.stderr"
        url = f"http://127.0.0.1:{port}/ready"
        with self.stderr.open("wb") as err, httpx.Client(timeout=2.0) as client:
            began = time.perf_counter()
            self.proc = subprocess.Popen(
                [str(SCRIPT)],
                cwd=ROOT,
                env=self.env(port),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            while time.perf_counter() - began < TIMEOUT_S:
                if self.proc.poll() is not None:
                    raise BenchError(f"exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if client.get(url).status_code == 200:
                        return time.perf_counter() - began
                except httpx.TransportError:
                    pass
                time.sleep(POLL_S)
        raise BenchError(f"/ready not 200 within {TIMEOUT_S:g}s:\n{self.log()}")

    def stop(self) -> float:
        """SIGTERM; seconds until the process exited 0 and nothing runs in the data dir."""
        assert self.proc is not None
        began = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=TIMEOUT_S)
        if code != 0:
            raise BenchError(f"exited with {code} after SIGTERM:\n{self.log()}")
        while processes_mentioning(self.data_dir):
            if time.perf_counter() - began > TIMEOUT_S:
                raise BenchError(
                    f"processes left in {self.data_dir}: {processes_mentioning(self.data_dir)}"
                )
            time.sleep(POLL_S)
        return time.perf_counter() - began

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def reported_startup_ms(self) -> float | None:
        """What the server itself logged as its start-up time (excludes the script)."""
        for line in self.log().splitlines():
            if "orchestrator ready on" in line and "start-up took" in line:
                return float(line.split("start-up took ")[1].split(" ms")[0])
        return None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT_S)
        for proc in processes_mentioning(self.data_dir):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def summary(samples: list[float]) -> dict[str, float | int]:
    return {
        "runs": len(samples),
        "min_s": round(min(samples), 3),
        "median_s": round(statistics.median(samples), 3),
        "max_s": round(max(samples), 3),
    }


def measure(runs: int) -> dict:
    workspace = Path(tempfile.mkdtemp(prefix="streamorch-bench-"))
    workspace.chmod(0o755)  # under root the embedded PostgreSQL runs as another user
    orchestrator = Orchestrator(workspace / "data", workspace)
    try:
        first = orchestrator.start()
        orchestrator.stop()
        cold, stop, reported = [], [], []
        for _ in range(runs):
            cold.append(orchestrator.start())
            reported.append(orchestrator.reported_startup_ms())
            stop.append(orchestrator.stop())
    finally:
        orchestrator.close()
        shutil.rmtree(workspace, ignore_errors=True)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["bench/startup.py", *sys.argv[1:]]),
        "first_start": summary([first]),
        "cold_start": summary(cold),
        "clean_stop": summary(stop),
        "server_reported_startup_ms": [r for r in reported if r is not None],
        "goals_s": GOALS_S,
    }
    result["goals_met"] = {name: result[name]["max_s"] <= goal for name, goal in GOALS_S.items()}
    return result


def print_table(result: dict) -> None:
    m = result["machine"]
    print(f"start-up benchmark — {result['date']}, {m['cores']} cores, {m['cpu']}")
    print(f"{'measure':<34} {'goal':>7} {'min':>8} {'median':>8} {'max':>8} {'runs':>5}")
    rows = [
        ("first start (fresh dir, initdb)", "first_start"),
        ("cold start → /ready 200", "cold_start"),
        ("clean stop (SIGTERM → all gone)", "clean_stop"),
    ]
    for label, key in rows:
        s = result[key]
        goal = f"≤ {GOALS_S[key]:g} s" if key in GOALS_S else "—"
        print(
            f"{label:<34} {goal:>7} {s['min_s']:>7.2f}s {s['median_s']:>7.2f}s "
            f"{s['max_s']:>7.2f}s {s['runs']:>5}"
        )
    verdicts = ", ".join(
        f"{key.replace('_', ' ')} median {result[key]['median_s']:.2f} s / max "
        f"{result[key]['max_s']:.2f} s (goal ≤ {goal:g} s: "
        f"{'met' if result['goals_met'][key] else 'MISSED'})"
        for key, goal in GOALS_S.items()
    )
    print(f"summary: {verdicts}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="cold starts and stops to time")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return run_bench(lambda: measure(args.runs), print_table, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
