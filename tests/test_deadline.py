"""``rpc.Deadline``: one timer per call bounds each read or write, re-armed for the operation under way."""

import asyncio

from server.rpc import Deadline


def test_each_operation_gets_its_full_time_and_only_a_slow_one_expires() -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        expired: list[float] = []
        deadline = Deadline(0.2, lambda: expired.append(loop.time()))
        for _ in range(4):  # quick operations back to back, longer together than the bound: none expires
            await deadline.bound(asyncio.sleep(0.08))
        assert expired == []
        slow_start = loop.time()
        await deadline.bound(asyncio.sleep(0.5))  # the timer an earlier operation set is re-armed for this one
        deadline.cancel()
        return [t - slow_start for t in expired]

    expired = asyncio.run(scenario())
    assert len(expired) == 1 and expired[0] >= 0.19  # once, at its own due time, not at the earlier operation's


def test_a_cancelled_deadline_never_expires() -> None:
    async def scenario() -> list[int]:
        expired: list[int] = []
        deadline = Deadline(0.05, lambda: expired.append(1))
        await deadline.bound(asyncio.sleep(0))
        deadline.cancel()
        await asyncio.sleep(0.15)
        return expired

    assert asyncio.run(scenario()) == []
