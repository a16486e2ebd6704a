"""Index calls with a time limit, whichever back end answers them.

The call runs on a worker thread and the caller waits at most until its deadline: past it the
caller gets `SearchTimeout` (a clear refusal, never a hang) while the worker finishes and
drops the result. The pool bounds how many such calls run at once; a call still queued when
its deadline passes is cancelled before it starts.
"""

import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from dicomflow.indexer.base import SearchRequest, SearchResult, StudyIndex
from dicomflow.indexer.exceptions import SearchTimeout

P = ParamSpec("P")
T = TypeVar("T")

SHARED_THREADS = 8

_shared: ThreadPoolExecutor | None = None
_shared_lock = threading.Lock()


@dataclass(frozen=True)
class Deadline:
    """A point in time (monotonic clock) by which an index answer is needed."""

    seconds: float
    at: float

    @classmethod
    def after(cls, seconds: float) -> "Deadline":
        return cls(seconds, time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left; raises SearchTimeout when none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self) -> SearchTimeout:
        return SearchTimeout(
            f"the index did not answer within {self.seconds:g} s "
            "(DICOMFLOW_QUERY_TIMEOUT): narrow the query or retry later"
        )


def call_before(
    deadline: Deadline,
    pool: Executor,
    function: Callable[P, T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """`function(*args, **kwargs)` on `pool`, or SearchTimeout once `deadline` passes."""
    future = pool.submit(function, *args, **kwargs)
    try:
        return future.result(timeout=deadline.remaining())
    except TimeoutError:
        if future.done() and future.exception() is not None:
            raise  # the back end's own timeout: its message says more
        future.cancel()
        raise deadline.expired() from None


def shared_pool() -> ThreadPoolExecutor:
    """The worker pool of the HTTP searches (created on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ThreadPoolExecutor(SHARED_THREADS, thread_name_prefix="dicomflow-search")
        return _shared


def search_within(index: StudyIndex, request: SearchRequest, seconds: float) -> SearchResult:
    """`index.search(request)`, or SearchTimeout after `seconds`."""
    return call_before(Deadline.after(seconds), shared_pool(), index.search, request)
