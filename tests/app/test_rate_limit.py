"""Webhook rate limiting: a token bucket per source."""

from __future__ import annotations

from app.access import RateLimiter


def test_burst_then_sustained_rate_per_source() -> None:
    limiter = RateLimiter(rate_per_s=2, burst=3)
    source, other = ("hubspot", "10.0.0.1"), ("hubspot", "10.0.0.2")
    assert [limiter.allow(source, now=0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow(other, now=0.0)  # another sender has its own bucket
    assert not limiter.allow(source, now=0.2)  # 0.4 tokens back: not yet
    assert limiter.allow(source, now=0.5)  # 1 token back
    assert [limiter.allow(source, now=100.0) for _ in range(4)] == [True, True, True, False]


def test_the_least_recently_used_sources_are_forgotten() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1, max_sources=2)
    for address in ("a", "b", "c"):
        assert limiter.allow(("generic", address), now=0.0)
    assert limiter.allow(("generic", "a"), now=0.0)  # forgotten: a fresh bucket
    assert not limiter.allow(("generic", "c"), now=0.0)
