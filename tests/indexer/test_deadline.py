"""Index calls with a deadline: a clear SearchTimeout, never a hang, on any back end."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dicomflow.indexer.deadline import Deadline, call_before
from dicomflow.indexer.exceptions import SearchTimeout


def test_an_answer_in_time_is_returned() -> None:
    with ThreadPoolExecutor(1) as pool:
        assert call_before(Deadline.after(5), pool, lambda x: x * 2, 21) == 42


def test_a_late_answer_is_a_search_timeout_and_a_queued_call_never_runs() -> None:
    release = threading.Event()
    ran: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        with pytest.raises(SearchTimeout, match="DICOMFLOW_QUERY_TIMEOUT"):
            call_before(Deadline.after(0.2), pool, release.wait, 10)
        assert time.monotonic() - started < 2
        # The only worker is still busy: the next call waits in the queue, times out and is
        # cancelled before it starts.
        with pytest.raises(SearchTimeout):
            call_before(Deadline.after(0.2), pool, ran.append, "ran")
        release.set()
    assert ran == []


def test_an_expired_deadline_refuses_at_once_and_errors_pass_through() -> None:
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(SearchTimeout):
            call_before(Deadline(1.0, time.monotonic() - 1), pool, lambda: None)

        def back_end_timeout() -> None:
            raise TimeoutError("the back end's own timeout")

        with pytest.raises(TimeoutError, match="own timeout"):
            call_before(Deadline.after(5), pool, back_end_timeout)
        with pytest.raises(ValueError, match="bad"):
            call_before(Deadline.after(5), pool, int, "bad")
