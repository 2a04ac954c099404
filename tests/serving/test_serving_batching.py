"""serving.batching.Batcher: batches grow with load, results go to the right caller, failures stay in their batch."""

from __future__ import annotations

import asyncio

import pytest

from serving.batching import Batcher


class Model:
    """A batch function that records its batches and holds each one until released."""

    def __init__(self, hold: bool = True):
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.running = 0
        self.most_running = 0

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        if -1 in items:
            raise ValueError("bad item")
        return [10 * i for i in items]


def run(coro):
    return asyncio.run(coro)


def test_items_waiting_while_a_batch_runs_form_the_next_batch():
    async def main():
        model = Model()
        b = Batcher(model, max_size=8)
        first = asyncio.ensure_future(b(0))
        await asyncio.sleep(0)                 # the lone first item starts at once, alone
        rest = [asyncio.ensure_future(b(i)) for i in range(1, 20)]
        await asyncio.sleep(0)
        assert model.batches == [[0]]          # nothing else starts while it runs (max_concurrent 1)
        model.release.set()
        results = await asyncio.gather(first, *rest)
        return model, results

    model, results = run(main())
    assert results == [10 * i for i in range(20)]
    # 19 items waited: they leave as full batches of 8, then the rest, oldest first.
    assert model.batches == [[0], list(range(1, 9)), list(range(9, 17)), list(range(17, 20))]
    assert model.most_running == 1


def test_max_concurrent_batches_run_together():
    async def main():
        model = Model()
        b = Batcher(model, max_size=4, max_concurrent=3)
        futures = [asyncio.ensure_future(b(i)) for i in range(10)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        running_then = model.running
        model.release.set()
        return running_then, model, await asyncio.gather(*futures)

    running_then, model, results = run(main())
    assert results == [10 * i for i in range(10)]
    assert running_then == 3 and model.most_running == 3
    assert sorted(i for batch in model.batches for i in batch) == list(range(10))
    assert all(len(batch) <= 4 for batch in model.batches)


def test_a_failing_batch_fails_only_its_own_items():
    async def main():
        model = Model()
        b = Batcher(model, max_size=2)
        futures = [asyncio.ensure_future(b(i)) for i in (5, -1, 7, 8)]
        await asyncio.sleep(0)
        model.release.set()
        return await asyncio.gather(*futures, return_exceptions=True)

    out = run(main())
    # batches: [5] alone (started at once), then [-1, 7] fails together, then [8] succeeds.
    assert out[0] == 50 and out[3] == 80
    assert isinstance(out[1], ValueError) and isinstance(out[2], ValueError)


def test_wrong_result_count_is_an_error_not_a_misrouted_result():
    async def short(items):
        return items[:-1]

    async def main():
        b = Batcher(short, max_size=4)
        return await asyncio.gather(*(b(i) for i in range(3)), return_exceptions=True)

    out = run(main())  # batches [0] and [1, 2] each come back one result short: every caller gets the error
    assert all(isinstance(o, RuntimeError) and "results for" in str(o) for o in out)


def test_wait_s_holds_a_small_batch_for_company_but_a_full_one_goes_at_once():
    async def main():
        model = Model(hold=False)
        b = Batcher(model, max_size=3, wait_s=0.05)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        lone = await b(1)
        waited = loop.time() - t0
        t1 = loop.time()
        full = await asyncio.gather(b(2), b(3), b(4))
        return lone, waited, full, loop.time() - t1, model.batches

    lone, waited, full, full_time, batches = run(main())
    assert lone == 10 and waited >= 0.045
    assert full == [20, 30, 40] and full_time < 0.04 and batches[-1] == [2, 3, 4]


def test_a_cancelled_waiter_is_not_computed():
    async def main():
        model = Model()
        b = Batcher(model, max_size=8)
        first = asyncio.ensure_future(b(0))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(b(1))
        kept = asyncio.ensure_future(b(2))
        await asyncio.sleep(0)
        gone.cancel()
        model.release.set()
        return await first, await kept, model.batches

    first, kept, batches = run(main())
    assert (first, kept) == (0, 20) and batches == [[0], [2]]


@pytest.mark.parametrize("kw", [{"max_size": 0}, {"max_size": 1, "max_concurrent": 0}, {"max_size": 1, "wait_s": -1}])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError):
        Batcher(lambda items: items, **kw)
