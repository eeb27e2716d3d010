"""Stop after the work in hand: SIGINT/SIGTERM set an event that a loop checks between units of
work (a poll, a run), instead of interrupting the unit halfway."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_after_work_in_hand(
    stop: threading.Event,
    *,
    work: str,
    log: logging.Logger,
    second_sigint_interrupts: bool = False,
) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM log ``received <SIG>; stopping after <work>`` and set ``stop``;
    with ``second_sigint_interrupts`` a SIGINT once ``stop`` is set raises KeyboardInterrupt.
    The previous handlers come back on exit. Outside the main thread (where Python cannot
    install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame) -> None:
        if second_sigint_interrupts and stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        # set before the log line: Python runs a signal arriving meanwhile inside this handler,
        # and that one must see the stop (a second Ctrl-C interrupts, not "received" again)
        stop.set()
        log.info("received %s; stopping after %s", signal.Signals(signum).name, work)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
