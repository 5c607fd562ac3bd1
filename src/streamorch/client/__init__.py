"""The worker SDK and admin client of Stream Orchestrator.

Imports nothing else from `streamorch`, so worker programs need only this package and
httpx: worker hosts install it alone as the `streamorch-client` distribution
(docs/decisions/0013-worker-sdk-distribution.md). Start with `AsyncWorker` (asyncio) or
`Worker` (blocking); see docs/howto/worker-sdk.md. `DEFAULT_SERVER` is the URL used when
none is given, `http://127.0.0.1:8001`.
"""

from streamorch.client.admin import AdminClient
from streamorch.client.errors import APIError, ClientError, TransportError
from streamorch.client.http import DEFAULT_SERVER, Connection
from streamorch.client.models import Assignment, Desired, Registration
from streamorch.client.sync import Worker
from streamorch.client.worker import AsyncWorker

__all__ = [
    "DEFAULT_SERVER",
    "APIError",
    "AdminClient",
    "Assignment",
    "AsyncWorker",
    "ClientError",
    "Connection",
    "Desired",
    "Registration",
    "TransportError",
    "Worker",
]
