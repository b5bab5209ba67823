"""One call per server, all at once, on threads: the one place that runs work across the
group's servers in parallel (a backup set, standbys, status, promotion, parity).

`settle` gives every server's result or exception (for reports that list each server);
`each` raises one ServerError naming every server that failed; `gather` raises the first
server's exception as it is (for calls that catch what they expect themselves).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from markship.errors import MarkshipError, ServerError, first_line

T = TypeVar("T")
E = TypeVar("E", bound=Exception)


@overload
def settle(calls: Mapping[str, Callable[[], T]]
           ) -> tuple[dict[str, T], dict[str, Exception]]: ...


@overload
def settle(calls: Mapping[str, Callable[[], T]], catch: type[E]
           ) -> tuple[dict[str, T], dict[str, E]]: ...


def settle(calls: Mapping[str, Callable[[], T]], catch: type[Exception] = Exception
           ) -> tuple[dict[str, T], dict[str, Any]]:
    """Run `calls` (server name → call) at once. Returns (results, failures) keyed by server
    name, in the order of `calls`; a failure is an exception of type `catch`.

    Any other exception is raised as it is once every call has finished (the first one in
    the order of `calls`). KeyboardInterrupt and SystemExit are never caught."""
    results: dict[str, T] = {}
    failures: dict[str, Any] = {}  # of type `catch`
    if not calls:
        return results, failures
    from concurrent.futures import ThreadPoolExecutor  # not on the lean path of marks

    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="markship-server") as pool:
        futures = {name: pool.submit(call) for name, call in calls.items()}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except catch as exc:
                failures[name] = exc
    return results, failures


def each(calls: Mapping[str, Callable[[], T]]) -> dict[str, T]:
    """Run `calls` at once; raise ServerError naming every server that failed."""
    results, failures = settle(calls)
    if failures:
        raise servers_failed({name: exc.message if isinstance(exc, MarkshipError)
                              else first_line(exc) for name, exc in failures.items()})
    return results


def gather(calls: Mapping[str, Callable[[], T]]) -> dict[str, T]:
    """Run `calls` at once; their results in the order of `calls`. The first exception (in
    that order) is raised as it is, once every call has finished."""
    results, failures = settle(calls)
    if failures:
        raise next(iter(failures.values()))
    return results


def servers_failed(failures: Mapping[str, str]) -> ServerError:
    """The one error a group step raises when some servers failed, naming each."""
    names = ", ".join(sorted(failures))
    detail = "; ".join(f"{n}: {m}" for n, m in sorted(failures.items()))
    return ServerError(f"server(s) {names} failed ({detail})",
                       "bring them back, then retry; markship status shows each server")
