"""`AdminClient`: the catalog, the fleet and the cluster's state, over the v1 API.

Every method returns the decoded JSON answer of API.md and raises the client's errors
(`APIError` with the server's `code`, `TransportError` when no server answered).

    async with AdminClient("http://127.0.0.1:8001", token=...) as admin:
        await admin.put_stream("radio/1", url="http://radio.example/1.mp3")
        print(await admin.status())
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import httpx

from streamorch.client.errors import APIError
from streamorch.client.http import Connection


class AdminClient:
    """Operator calls; one instance may be shared by many tasks.

    Args:
        servers: The orchestrator's base URL(s), as for `AsyncWorker`.
        token: The admin token (`STREAMORCH_ADMIN_TOKEN` on the server), when set.
        client: A ready `httpx.AsyncClient` to use (not closed by `aclose()`).
        transport: An httpx transport for the clients created here (tests).
        timeout: Seconds each request may take.
    """

    def __init__(
        self,
        servers: str | Sequence[str] | None = None,
        *,
        token: str | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._conn = Connection(
            servers, token=token, client=client, transport=transport, timeout=timeout
        )

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections (also done by `async with`)."""
        await self._conn.aclose()

    async def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """Any v1 call, for what has no method of its own."""
        return await self._conn.request(method, path, json=json, params=params)

    async def _object(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A call whose answer is a JSON object; `APIError` when it is something else."""
        body = await self.request(method, path, json=json, params=params)
        if not isinstance(body, dict):
            raise APIError(200, "unexpected_answer", f"{method} {path} answered {body!r}")
        return body

    # -- streams ----------------------------------------------------------------------
    async def put_stream(
        self,
        key: str,
        *,
        url: str,
        weight: int = 1,
        labels: Mapping[str, str] | None = None,
        requires: Mapping[str, str] | None = None,
        enabled: bool = True,
    ) -> dict[str, Any]:
        """Create or replace the stream `key` (201 or 200); returns the stream."""
        body = {
            "url": url,
            "weight": weight,
            "labels": dict(labels or {}),
            "requires": dict(requires or {}),
            "enabled": enabled,
        }
        return await self._object("PUT", f"/v1/streams/{key}", json=body)

    async def get_stream(self, key: str) -> dict[str, Any]:
        """The stream with its `assignment` (worker, token, state) or None, and `reason`."""
        return await self._object("GET", f"/v1/streams/{key}")

    async def delete_stream(self, key: str) -> None:
        """Delete the stream; its worker is told to stop it."""
        await self.request("DELETE", f"/v1/streams/{key}")

    async def explain(self, key: str) -> dict[str, Any]:
        """Why the stream is where it is, or why no worker can take it."""
        return await self._object("GET", f"/v1/streams/{key}/explain")

    async def bulk(
        self, streams: Iterable[Mapping[str, Any]], *, mode: str = "upsert"
    ) -> dict[str, int]:
        """Upsert (or, with `mode="replace"`, replace the catalog with) `streams`."""
        body = {"streams": [dict(s) for s in streams], "mode": mode}
        counts = await self._object("POST", "/v1/streams/bulk", json=body)
        return {str(k): int(v) for k, v in counts.items()}

    async def list_streams(
        self,
        *,
        limit: int = 100,
        cursor: str | None = None,
        state: str | None = None,
        worker: str | None = None,
    ) -> dict[str, Any]:
        """One page: `{"items": [...], "next_cursor": str | None}`."""
        params = _params(limit=limit, cursor=cursor, state=state, worker=worker)
        return await self._object("GET", "/v1/streams", params=params)

    async def iter_streams(
        self, *, state: str | None = None, worker: str | None = None, page: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """Every stream, page by page."""
        cursor: str | None = None
        while True:
            body = await self.list_streams(limit=page, cursor=cursor, state=state, worker=worker)
            for item in body["items"]:
                yield item
            cursor = body.get("next_cursor")
            if not cursor:
                return

    # -- workers ----------------------------------------------------------------------
    async def workers_page(
        self, *, status: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of workers in name order: `{"items": [...], "next_cursor": str | None}`.

        `status`: active, draining, expired, left, or the groups live (the server's
        default), departed and all.
        """
        params = _params(status=status, limit=limit, cursor=cursor)
        return await self._object("GET", "/v1/workers", params=params)

    async def iter_workers(
        self, *, status: str | None = None, page: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """Every worker with `status` (default: live), page by page."""
        cursor: str | None = None
        while True:
            body = await self.workers_page(status=status, limit=page, cursor=cursor)
            for item in body["items"]:
                yield item
            cursor = body.get("next_cursor")
            if not cursor:
                return

    async def list_workers(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every worker with `status` (default: live ones), all pages collected."""
        return [w async for w in self.iter_workers(status=status)]

    async def get_worker(self, worker: str) -> dict[str, Any]:
        """One worker by name or id, whatever its status; `APIError` 404 if none."""
        body = await self.request("GET", "/v1/workers", params={"name": worker, "status": "all"})
        if body["items"]:
            return dict(body["items"][0])
        if _is_uuid(worker):
            return await self._object("GET", f"/v1/workers/{worker}")
        raise APIError(404, "not_found", f"no worker {worker!r}: see `streamorch workers list`")

    async def drain_worker(self, worker_id: str) -> None:
        """Move every stream off the worker and give it nothing new."""
        await self.request("POST", f"/v1/workers/{worker_id}/drain")

    async def remove_worker(self, worker_id: str, *, force: bool = False) -> None:
        """Deregister the worker; without `force`, refused (409) while it owns streams."""
        params = {"force": "true" if force else "false"}
        await self.request("DELETE", f"/v1/workers/{worker_id}", params=params)

    async def forget_worker(self, worker_id: str) -> None:
        """Delete a departed (left or expired) worker now; its events keep its name.

        `APIError` 409 `worker_not_departed` while it is live.
        """
        await self.request("POST", f"/v1/workers/{worker_id}/forget")

    # -- cluster ----------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        """Cluster counts, capacity, load, balance and the last reconcile pass."""
        return await self._object("GET", "/v1/status")

    async def events(
        self,
        *,
        since: int = 0,
        limit: int = 100,
        stream: str | None = None,
        before: int | None = None,
        newest: bool = False,
    ) -> dict[str, Any]:
        """Events after the id `since`, at most `limit`, optionally of one `stream`: oldest
        first, or with `newest` the latest ones, newest first; `before` (newest first)
        pages back. `{"items": [...], "next_since": id}`, and with newest first
        `"next_before": id | None` for the page before."""
        params = _params(since=since, limit=limit, stream=stream, before=before)
        if newest:
            params["newest"] = "true"
        return await self._object("GET", "/v1/events", params=params)


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
