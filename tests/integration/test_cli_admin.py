"""The client-side commands against a real `streamorch serve` process.

The server runs as a subprocess on a database of the test PostgreSQL server, with an
admin token; the commands run in process (typer's CliRunner) and talk to it over HTTP
exactly as they would from an operator's shell.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid

import httpx
import pytest
from typer.testing import CliRunner

from streamorch.cli.main import app
from tests.conftest import _recreate, drop_database
from tests.e2e.harness import ROOT, clean_env, free_port
from tests.support.cluster import spawn_server, stop_server, wait_server_ready

TOKEN = "admin-secret"


@pytest.fixture(scope="module")
def server(postgres_server, template_database, redis_url, tmp_path_factory):
    name = f"t_{uuid.uuid4().hex[:12]}"
    _recreate(postgres_server, name, template=template_database)
    workdir = tmp_path_factory.mktemp("cli-admin")
    port = free_port()
    log = workdir / "server.log"
    env = clean_env(
        DATABASE_URL=postgres_server.url(name),
        REDIS_URL=redis_url,
        STREAMORCH_DATA_DIR=str(workdir / "data"),
        ORCHESTRATOR_PORT=str(port),
        STREAMORCH_ADMIN_TOKEN=TOKEN,
        HEARTBEAT_INTERVAL="0.3",
        LEASE_TTL="3",
        RECONCILE_INTERVAL="0.1",
    )
    env.pop("STREAMORCH_WORKER_TOKEN", None)
    proc = spawn_server(env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_server_ready(proc, url, describe=log.read_text)
        yield url
    finally:
        stop_server(proc)
        drop_database(postgres_server, name)


@pytest.fixture
def cli(server):
    runner = CliRunner()

    def run(*args: str, token: str | None = TOKEN, code: int = 0):
        env = {"STREAMORCH_SERVER": server, "STREAMORCH_TOKEN": token}
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, (
            f"{args}: exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
        )
        return result

    return run


def as_json(result) -> object:
    return json.loads(result.stdout)


def test_streams_put_get_list_explain_delete(cli):
    cli(
        "streams", "put", "radio/1", "--url", "http://r/1", "--weight", "2", "--label", "genre=jazz"
    )
    got = as_json(cli("streams", "get", "radio/1", "--json"))
    assert (got["url"], got["weight"], got["labels"]) == ("http://r/1", 2, {"genre": "jazz"})
    human = cli("streams", "get", "radio/1").stdout
    assert "http://r/1" in human
    assert "genre=jazz" in human

    listed = as_json(cli("streams", "list", "--json"))
    assert [s["key"] for s in listed] == ["radio/1"]
    assert "radio/1" in cli("streams", "list").stdout

    explained = cli("streams", "explain", "radio/1").stdout
    assert "radio/1" in explained
    assert "no live worker" in explained

    cli("streams", "delete", "radio/1")
    missing = cli("streams", "get", "radio/1", code=1)
    assert "no stream 'radio/1'" in missing.stderr
    bad = cli("streams", "put", "bad key", "--url", "http://r/x", code=1)
    assert "stream key 'bad key' is invalid" in bad.stderr


def test_import_csv_and_json_is_idempotent(cli, tmp_path):
    csv_file = tmp_path / "stations.csv"
    csv_file.write_text(
        "id,url,weight,labels\n"
        + "".join(f'{i},http://r/{i},1,"{{""region"": ""eu""}}"\n' for i in range(1, 13))
    )
    first = as_json(cli("streams", "import", str(csv_file), "--chunk", "5", "--json"))
    assert first == {"created": 12, "updated": 0, "deleted": 0, "unchanged": 0}
    again = cli("streams", "import", str(csv_file), "--chunk", "5").stdout
    assert "0 created, 0 updated, 0 deleted, 12 unchanged" in again
    assert as_json(cli("streams", "get", "7", "--json"))["labels"] == {"region": "eu"}

    json_file = tmp_path / "catalog.json"
    streams = [{"key": str(i), "url": f"http://r/{i}"} for i in range(1, 11)]
    streams[0]["url"] = "http://r/1-new"
    json_file.write_text(json.dumps({"streams": streams}))
    replaced = as_json(cli("streams", "import", str(json_file), "--replace", "--json"))
    # 1 changed url; 2-10 lose their labels (not in the file); 11 and 12 are gone.
    assert replaced == {"created": 0, "updated": 10, "deleted": 2, "unchanged": 0}
    assert as_json(cli("streams", "import", str(json_file), "--replace", "--json")) == {
        "created": 0,
        "updated": 0,
        "deleted": 0,
        "unchanged": 10,
    }
    assert len(as_json(cli("streams", "list", "--json"))) == 10

    broken = tmp_path / "broken.csv"
    broken.write_text("id,url\n1,http://r/1\n2,\n")
    failed = cli("streams", "import", str(broken), code=1)
    assert "row 2" in failed.stderr
    assert "no url" in failed.stderr


def test_workers_status_events_and_tokens(cli, server):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    worker = httpx.post(
        server + "/v1/workers/register", json={"name": "w-cli", "capacity": 5}, headers=headers
    ).json()
    listed = as_json(cli("workers", "list", "--json"))
    assert [w["name"] for w in listed if w["status"] == "active"] == ["w-cli"]
    assert "w-cli" in cli("workers", "list").stdout

    assert "w-cli is draining" in cli("workers", "drain", "w-cli").stdout
    drained = {w["name"]: w for w in as_json(cli("workers", "list", "--json"))}
    assert drained["w-cli"]["status"] == "draining"
    assert "no worker 'ghost'" in cli("workers", "drain", "ghost", code=1).stderr

    status = as_json(cli("status", "--json"))
    assert status["workers"]["draining"] == 1, status["workers"]
    assert "workers" in cli("status").stdout

    events = as_json(cli("events", "--json", "--limit", "1000"))
    kinds = {e["kind"] for e in events["items"]}
    assert {"worker_joined", "drain_started"} <= kinds
    assert "drain_started" in cli("events", "--limit", "1000").stdout
    assert worker["worker_id"] in {e["worker_id"] for e in events["items"]}

    # The server's own message, and a non-zero exit, without or with a wrong token.
    denied = cli("status", token="wrong", code=1)
    assert "the token sent is not accepted: this call needs the admin token" in denied.stderr
    assert "set STREAMORCH_ADMIN_TOKEN" in denied.stderr  # the fix, for this tool
    missing = cli("status", token=None, code=1)
    assert "no token sent" in missing.stderr
    assert "Traceback" not in missing.stderr + denied.stderr


def test_workers_forget_a_departed_worker_by_name(cli, server):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    worker = httpx.post(
        server + "/v1/workers/register", json={"name": "w-old", "capacity": 5}, headers=headers
    ).json()
    # Forced: streams of the tests before may already have been granted to it.
    removed = httpx.delete(
        f"{server}/v1/workers/{worker['worker_id']}", params={"force": "true"}, headers=headers
    )
    assert removed.status_code == 204, removed.text
    departed = as_json(cli("workers", "list", "--status", "departed", "--json"))
    assert "w-old" in [w["name"] for w in departed]
    assert "w-old" not in cli("workers", "list").stdout  # live workers by default

    assert "worker w-old forgotten" in cli("workers", "forget", "w-old").stdout
    departed = as_json(cli("workers", "list", "--status", "departed", "--json"))
    assert "w-old" not in [w["name"] for w in departed]
    assert "no worker 'w-old'" in cli("workers", "forget", "w-old", code=1).stderr


def test_no_server_exits_2_saying_where_it_looked():
    result = CliRunner().invoke(
        app, ["status"], env={"STREAMORCH_SERVER": f"http://127.0.0.1:{free_port()}"}
    )
    assert result.exit_code == 2
    assert "no orchestrator answered at http://127.0.0.1:" in result.stderr


def test_url_mistakes_get_hints_naming_the_fix(server):
    port = server.rsplit(":", 1)[1]
    env = {"STREAMORCH_TOKEN": TOKEN}
    for url, code, says in (
        (f"127.0.0.1:{port}", 2, f"has no scheme: write http://127.0.0.1:{port}"),
        (f"{server}/v1", 1, "without the path '/v1'"),
        (f"https://127.0.0.1:{port}", 2, "does not speak HTTPS"),
    ):
        result = CliRunner().invoke(app, ["status", "--server", url], env=env)
        assert result.exit_code == code, (url, result.stdout, result.stderr)
        assert says in result.stderr, (url, result.stderr)
        assert "Traceback" not in result.stderr
        assert "streamorch serve" not in result.stderr  # the server is up: not the advice


def test_events_shows_the_newest_and_follows(cli, server):
    for i in range(3):
        cli("streams", "put", f"ev/{i}", "--url", f"http://r/{i}")
    oldest = as_json(cli("events", "--json", "--since", "0", "--limit", "1000"))["items"]
    newest = as_json(cli("events", "--json", "--limit", "2"))["items"]
    assert [e["id"] for e in newest] == sorted((e["id"] for e in oldest), reverse=True)[:2]
    assert newest[0]["stream"] == "ev/2"

    env = clean_env(STREAMORCH_SERVER=server, STREAMORCH_ADMIN_TOKEN=TOKEN)
    follower = subprocess.Popen(
        [
            sys.executable,
            "-X",
            "faulthandler",
            "-m",
            "streamorch",
            "events",
            "--follow",
            "--json",
            "--limit",
            "1",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(follower.stdout.readline())
        # The latest one, then live (workers of other tests on this server may add events
        # of their own meanwhile, e.g. when their leases end).
        assert first["id"] >= max(e["id"] for e in oldest)
        cli("streams", "put", "ev/live", "--url", "http://r/live")
        followed = [json.loads(follower.stdout.readline())]
        while followed[-1]["stream"] != "ev/live" and len(followed) < 50:
            followed.append(json.loads(follower.stdout.readline()))
        live = followed[-1]
        assert (live["kind"], live["stream"]) == ("stream_created", "ev/live")
        assert [e["id"] for e in followed] == sorted({e["id"] for e in followed})
        assert live["id"] > first["id"]
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            _, err = follower.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # Where it hangs: -X faulthandler prints every thread's stack on SIGABRT.
            follower.send_signal(signal.SIGABRT)
            _, err = follower.communicate(timeout=30)
            pytest.fail(f"`events --follow` did not stop within 30 s of SIGINT:\n{err}")
    assert follower.returncode == 0, err
    assert "Traceback" not in err
