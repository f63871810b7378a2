"""One timer for many timeouts of the same length: a call's read or write, a call's age, an idle KServe sequence.

A timer per call (``loop.call_later``) costs a handle, a heap entry and a cancel per operation, and
keeps the context it was set in, and so the call that set it, until it is due, even once
cancelled. Here what is armed waits in a dict in the order it was armed, which with one length
for all is the order it falls due, so one timer, set for the first, serves all of them. It runs
in an empty context, so it keeps nothing of the call that armed it
(``bench/idle_sessions.py``, ``docs/server.md``, "Memory per idle session").
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")


class Timeouts(Generic[Item]):
    """``expire(item)`` runs once ``seconds`` have passed since ``item`` was last armed, unless it was disarmed."""

    def __init__(self, seconds: float, expire: Callable[[Item], None]) -> None:
        self.seconds, self.expire = seconds, expire
        self.armed: dict[Item, float] = {}  # item -> when it was armed (loop time), the oldest first
        self.timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the first arm's (asyncio's look-up costs a getpid)

    def arm(self, item: Item) -> None:
        """Start ``item``'s timeout again from now."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        self.armed.pop(item, None)
        self.armed[item] = now = self.loop.time()
        if self.timer is None:
            self.timer = self.loop.call_at(now + self.seconds, self._due, context=contextvars.Context())

    def disarm(self, item: Item) -> None:
        self.armed.pop(item, None)

    def _due(self) -> None:
        """Expire what is due, and set the timer for the first that is not."""
        self.timer = None
        while self.armed:
            item, since = next(iter(self.armed.items()))
            if since + self.seconds > self.loop.time():
                self.timer = self.loop.call_at(since + self.seconds, self._due, context=contextvars.Context())
                return
            del self.armed[item]
            self.expire(item)

    def cancel(self) -> None:
        """Disarm everything (the server stops)."""
        self.armed.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
