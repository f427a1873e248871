"""Retry delays and rate limits, as pure functions of time handed in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random

#: each delay is the doubled base times a factor drawn from [1 - JITTER, 1 + JITTER];
#: below 1/3 every retry still waits longer than the one before it
JITTER = 0.25


def backoff_delay(retry: int, backoff_s: float, rng: random.Random) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry).

    :param retry: 1-based retry number
    :param backoff_s: the first retry's base delay; doubled for each later one
    :param rng: the scheduler's injected random source
    :returns: the delay, jittered, never negative
    """
    if backoff_s <= 0:
        return 0.0
    base = backoff_s * 2.0 ** (retry - 1)
    return base * (1 - JITTER + 2 * JITTER * rng.random())


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """What a named limit allows, as declared (``limits:`` in a flow file)."""

    #: None: no bound
    concurrency: int | None = None
    rate_per_s: float | None = None


def scoped(scope: str, name: str) -> str:
    """The scheduler's name for limit ``name`` of ``scope`` (unscoped when scope is "")."""
    return f"{scope}:{name}" if scope else name


@dataclass(slots=True)
class Limit:
    """A named pool: at most ``concurrency`` attempts at once, and at most ``rate_per_s``
    attempt starts a second (a token bucket holding ``burst`` tokens)."""

    #: None: no bound
    concurrency: int | None = None
    rate_per_s: float | None = None
    #: tokens the bucket holds when full; default one tenth of a second's worth, at least 1
    burst: float | None = None
    in_use: int = 0
    _tokens: float = field(default=-1.0, repr=False)
    _refilled_at: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.rate_per_s is not None:
            if self.rate_per_s <= 0:
                raise ValueError(f"rate must be above 0 per second, not {self.rate_per_s}")
            if self.burst is None:
                self.burst = max(1.0, self.rate_per_s / 10)
            self._tokens = self.burst

    def room(self, now: float) -> int | None:
        """How many attempts may start now (None: unbounded)."""
        room: int | None = None
        if self.concurrency is not None:
            room = self.concurrency - self.in_use
        if self.rate_per_s is not None:
            self._refill(now)
            tokens = int(self._tokens + 1e-9)  # float error must not stall a due token
            room = tokens if room is None else min(room, tokens)
        return room

    def take(self, now: float, units: int = 1) -> None:
        self.in_use += units
        if self.rate_per_s is not None:
            self._refill(now)
            self._tokens -= units

    def release(self, units: int = 1) -> None:
        self.in_use -= units

    def most(self) -> int | None:
        """The most units one attempt may hold: its concurrency, and the bucket's size
        (a heavier one could never start). None: no bound."""
        most = self.concurrency
        if self.burst is not None:
            whole = int(self.burst + 1e-9)
            most = whole if most is None else min(most, whole)
        return most

    def next_token_at(self, now: float, units: int = 1) -> float | None:
        """When the bucket will hold ``units`` tokens, if it does not now."""
        if self.rate_per_s is None:
            return None
        self._refill(now)
        if self._tokens + 1e-9 >= units:
            return None
        return now + (units - self._tokens) / self.rate_per_s

    def _refill(self, now: float) -> None:
        assert self.rate_per_s is not None and self.burst is not None
        if self._refilled_at is not None and now > self._refilled_at:
            self._tokens = min(
                self.burst, self._tokens + (now - self._refilled_at) * self.rate_per_s
            )
        if self._refilled_at is None or now > self._refilled_at:
            self._refilled_at = now
