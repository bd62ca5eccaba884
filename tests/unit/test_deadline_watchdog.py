"""The deadline watchdog itself: it survives a connection it cannot cut, and a forked
child gets a working watchdog of its own."""

from __future__ import annotations

import multiprocessing
import sys
import time

import pytest

from secureml.key_management.backends._deadline import WATCHDOG


class _Unshuttable:
    """A connection whose socket object has no shutdown (as urllib3's SSLTransport)."""

    sock = object()


def test_the_watchdog_survives_a_connection_it_cannot_cut() -> None:
    ticket = WATCHDOG.watch(time.monotonic() + 0.05, _Unshuttable())
    time.sleep(0.2)
    assert WATCHDOG.release(ticket) is True  # it fired, and said so
    assert WATCHDOG._thread is not None
    assert WATCHDOG._thread.is_alive()
    later = WATCHDOG.watch(time.monotonic() + 0.05, _Unshuttable())
    time.sleep(0.2)
    assert WATCHDOG.release(later) is True


def _child(queue: multiprocessing.Queue[bool]) -> None:
    ticket = WATCHDOG.watch(time.monotonic() + 0.05, _Unshuttable())
    time.sleep(0.2)
    queue.put(WATCHDOG.release(ticket))


@pytest.mark.skipif(sys.platform != "linux", reason="fork is the default on Linux only")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_has_a_working_watchdog() -> None:
    WATCHDOG.release(WATCHDOG.watch(time.monotonic() + 60, _Unshuttable()))  # parent uses it
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[bool] = context.Queue()
    child = context.Process(target=_child, args=(queue,))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert queue.get(timeout=1) is True
