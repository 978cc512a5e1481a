"""The micro-batcher on its own: release reasons, routing of answers, errors per request."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from dlpipe import runs
from dlpipe.serve.batching import MicroBatcher
from dlpipe.serve.monitoring import Metrics
from dlpipe.serve.repository import discover, load_model
from dlpipe.serve.schema import BadRequest


@pytest.fixture(scope="module")
def model(binary_run):
    return load_model(discover(binary_run.rundir.file(runs.EXPORT))[0])


@pytest.fixture(scope="module")
def rows(binary_run, kit):
    return kit.rows_of(binary_run.rundir.read_split("test"))


def released(metrics, reason):
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "dlpipe_batches_total" and sample.labels["reason"] == reason:
                return sample.value
    return 0.0


def run(batcher, coroutine_factory):
    async def main():
        batcher.start(asyncio.get_running_loop())
        try:
            return await coroutine_factory()
        finally:
            await asyncio.to_thread(batcher.stop)

    return asyncio.run(main())


def test_a_lone_request_waits_max_delay_only_when_others_are_in_flight(model, rows):
    metrics = Metrics()
    others = {"in_flight": 3}
    batcher = MicroBatcher(model, max_batch_size=8, max_delay_ms=60, metrics=metrics,
                           in_flight=lambda: others["in_flight"])

    async def two_requests():
        began = time.perf_counter()
        await batcher.submit(rows=rows[:1])
        waited = time.perf_counter() - began
        others["in_flight"] = 1
        began = time.perf_counter()
        await batcher.submit(rows=rows[:1])
        return waited, time.perf_counter() - began

    waited, alone = run(batcher, two_requests)
    assert waited >= 0.06 and released(metrics, "timeout") == 1
    assert alone < 0.06 and released(metrics, "idle") == 1


def test_a_full_batch_is_released_at_once_and_each_request_gets_its_rows(model, rows):
    metrics = Metrics()
    batcher = MicroBatcher(model, max_batch_size=6, max_delay_ms=5000, metrics=metrics)
    expected = model.predictor.predict(rows[:6])

    async def six():
        return await asyncio.gather(*(batcher.submit(rows=[row]) for row in rows[:6]))

    began = time.perf_counter()
    outputs = run(batcher, six)
    assert time.perf_counter() - began < 5  # not the 5 s delay: the batch was full
    assert released(metrics, "full") == 1 and released(metrics, "timeout") == 0
    assert [o.labels[0] for o in outputs] == expected.labels.tolist()
    np.testing.assert_allclose(np.vstack([o.probabilities for o in outputs]),
                               expected.probabilities, rtol=1e-6)


def test_one_bad_request_fails_alone_in_its_batch(model, rows):
    batcher = MicroBatcher(model, max_batch_size=3, max_delay_ms=5000)

    async def mixed():
        return await asyncio.gather(
            batcher.submit(rows=[rows[0]]),
            batcher.submit(rows=[rows[1], {**rows[2], "x0": "not a number"}]),
            batcher.submit(x=np.zeros((1, 5), dtype=np.float32)),
            return_exceptions=True)

    good, bad, tensor = run(batcher, mixed)
    assert good.labels == model.predictor.predict([rows[0]]).labels.tolist()
    assert isinstance(bad, BadRequest) and str(bad).startswith("rows[1].x0: expected a number")
    assert tensor.raw.shape == (1, 1)
