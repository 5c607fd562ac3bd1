"""Retry a transaction that PostgreSQL aborted to resolve a conflict between transactions.

A deadlock or serialization failure is not a fault: PostgreSQL rolled one
transaction back so the others could go on, and running it again is correct
(every store method is one transaction, so nothing of the first attempt remains).
Answering such a request with "database unavailable" would be wrong.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import psycopg
from psycopg import errors
from psycopg_pool import PoolTimeout
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from streamorch.domain.errors import (
    StoreError,
    StoreUnavailable,
    TransactionConflict,
    UnstorableValue,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

CONFLICTS = (errors.DeadlockDetected, errors.SerializationFailure)
ATTEMPTS = 5


def retry_conflicts(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Run `method` again (up to ATTEMPTS times, jittered) when its transaction lost a conflict."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(ATTEMPTS),
            # Random waits so that the transactions that collided do not collide again.
            wait=wait_random_exponential(multiplier=0.01, max=0.2),
            retry=retry_if_exception_type(CONFLICTS),
            reraise=True,
            before_sleep=lambda state: log.info(
                "%s lost a conflict with a concurrent transaction; retrying",
                method.__qualname__,
                extra={
                    "action": "transaction_retry",
                    "attempt": state.attempt_number,
                    "error": type(state.outcome.exception()).__name__ if state.outcome else None,
                },
            ),
        )
        async for attempt in retrying:
            with attempt:
                return await method(*args, **kwargs)
        raise AssertionError("unreachable: tenacity reraises the last error")

    return wrapper


def wrapped(exc: psycopg.Error) -> StoreError:
    """The domain error for a driver error (kept as `__cause__` by `raise … from exc`)."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, CONFLICTS):
        return TransactionConflict(text)
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        return StoreUnavailable(text)
    if isinstance(exc, psycopg.DataError):
        return UnstorableValue(text)
    return StoreError(text)


def wraps_driver_errors(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """`method`'s driver errors raised as StoreError (the driver's error as `__cause__`)."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except psycopg.Error as exc:
            raise wrapped(exc) from exc

    return wrapper


@contextlib.asynccontextmanager
async def driver_errors() -> AsyncIterator[None]:
    """Raise driver errors of the block as `StoreError` (conflicts: `TransactionConflict`)."""
    try:
        yield
    except psycopg.Error as exc:
        raise wrapped(exc) from exc


C = TypeVar("C", bound=type)


def driver_errors_wrapped(cls: C) -> C:
    """Every public coroutine method of `cls` raises StoreError, never a driver error."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, wraps_driver_errors(member))
    return cls
