import pytest

from fileshare.health import InFlight, Readiness


class Flaky:
    def __init__(self, *outcomes: bool) -> None:
        self.outcomes = list(outcomes)

    async def __call__(self) -> None:
        if not self.outcomes.pop(0):
            raise ConnectionError("down")


async def test_one_failure_after_success_does_not_flip_readiness() -> None:
    readiness = Readiness({"clamd": Flaky(True, False, False, False, True)}, failure_threshold=3)
    assert (await readiness.evaluate())[0] is True
    ready, report = await readiness.evaluate()
    assert ready is True
    assert report["clamd"].startswith("degraded")
    assert (await readiness.evaluate())[0] is True
    ready, report = await readiness.evaluate()  # third failure in a row
    assert ready is False
    assert report["clamd"].startswith("failing")
    assert (await readiness.evaluate())[0] is True  # recovered


async def test_a_check_that_never_answered_is_down_at_once() -> None:
    readiness = Readiness({"storage": Flaky(False)})
    ready, report = await readiness.evaluate()
    assert ready is False
    assert report["storage"].startswith("failing")


async def test_slow_check_times_out_as_a_failure() -> None:
    import asyncio

    async def slow() -> None:
        await asyncio.sleep(5)

    readiness = Readiness({"index": slow}, timeout=0.05)
    assert (await readiness.evaluate())[0] is False


async def test_draining_is_not_ready() -> None:
    readiness = Readiness({"clamd": Flaky(True)})
    readiness.draining.set()
    ready, report = await readiness.evaluate()
    assert ready is False
    assert report["server"] == "draining"


@pytest.mark.parametrize("count", [1, 3])
async def test_in_flight_waits_until_idle(count: int) -> None:
    in_flight = InFlight()
    assert await in_flight.wait_idle(0.01) is True
    for _ in range(count):
        in_flight.enter()
    assert await in_flight.wait_idle(0.01) is False
    for _ in range(count):
        in_flight.leave()
    assert await in_flight.wait_idle(0.01) is True
