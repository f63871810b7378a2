"""``server.timeouts.Timeouts``: one timer for many timeouts of one length, each restarted by ``arm``."""

import asyncio
import contextvars

from server.timeouts import Timeouts


def test_each_arm_gets_its_full_time_and_only_a_slow_one_expires() -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        expired: list[float] = []
        timeouts: Timeouts[str] = Timeouts(0.2, lambda item: expired.append(loop.time()))
        for _ in range(4):  # quick operations back to back, longer together than the bound: none expires
            timeouts.arm("call")
            await asyncio.sleep(0.08)
            timeouts.disarm("call")
        assert expired == []
        slow_start = loop.time()
        timeouts.arm("call")  # the timer an earlier arm set is set again for this one
        await asyncio.sleep(0.5)
        return [t - slow_start for t in expired]

    expired = asyncio.run(scenario())
    assert len(expired) == 1 and 0.19 <= expired[0] < 0.3  # once, at its own due time, not at the earlier one's


def test_items_expire_in_turn_at_their_own_times_from_an_empty_context() -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")

    async def scenario() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        started, expired = loop.time(), {}
        timeouts: Timeouts[str] = Timeouts(0.3, lambda item: expired.setdefault(item, loop.time() - started))
        marker.set("the caller's")
        for item in ("a", "b", "c"):
            timeouts.arm(item)
            await asyncio.sleep(0.1)
        assert timeouts.timer is not None and marker not in timeouts.timer._context  # it keeps no caller's context
        timeouts.arm("b")  # at 0.3 s: b is due at 0.6 s now, after c
        timeouts.disarm("c")
        await asyncio.sleep(0.5)
        return expired

    expired = asyncio.run(scenario())
    assert sorted(expired) == ["a", "b"], expired
    assert 0.29 <= expired["a"] < 0.4 and 0.59 <= expired["b"] < 0.7, expired


def test_a_cancelled_timeouts_never_expires() -> None:
    async def scenario() -> list[str]:
        expired: list[str] = []
        timeouts: Timeouts[str] = Timeouts(0.05, expired.append)
        timeouts.arm("call")
        timeouts.cancel()
        await asyncio.sleep(0.15)
        return expired

    assert asyncio.run(scenario()) == []
