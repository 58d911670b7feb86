from __future__ import annotations

from holysheep.demo import demo


async def test_demo_holds_the_batch_to_its_limits_and_shows_the_bare_batch_breaking_them() -> None:
    limited, bare, table = await demo(calls=40, max_qps=20, max_concurrency=5, seed=1, latency_s=(0.01, 0.05))
    assert limited.peak_qps() <= 20 and limited.peak_in_flight <= 5
    assert bare.peak_qps() == 40 and bare.peak_in_flight > 5
    assert "peak QPS (any 1 s)" in table and "with holysheep" in table
