"""Whether the API is reachable from other machines without any token, and the warning."""

from __future__ import annotations

import ipaddress

from streamorch.config import Settings


def exposed(settings: Settings) -> bool:
    """Reachable from other machines (not bound to loopback) without any token."""
    host = settings.orchestrator_host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return not (loopback or settings.admin_token is not None or settings.worker_token is not None)


OPEN_API_FIX = "set STREAMORCH_ADMIN_TOKEN and STREAMORCH_WORKER_TOKEN, or bind to 127.0.0.1"


def open_api_warning(settings: Settings) -> str:
    """The warning about an API without tokens (the log's, also shown by the dashboard)."""
    return (
        f"THE API IS OPEN: listening on {settings.orchestrator_host} without "
        "STREAMORCH_ADMIN_TOKEN or STREAMORCH_WORKER_TOKEN — anyone who can reach this port "
        "can change the catalog and the fleet"
    )
