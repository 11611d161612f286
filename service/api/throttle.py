"""Per-caller limits: requests per API key, and failed key attempts per client address.

One token bucket per caller, in this process (`facebank serve` runs one worker): `per_minute` tokens, refilled
evenly over a minute, so a caller may burst up to the limit and then goes at the limit's pace.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

# Why a cap: the buckets are keyed by what callers send (addresses); an attacker rotating them must not
# grow this without bound. Full buckets carry no state and go first.
MAX_CALLERS = 10_000


class Throttle:
    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def _tokens(self, caller: str, now: float) -> float:
        tokens, at = self._buckets.get(caller, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.rate)

    def _wait(self, tokens: float) -> int:
        """Whole seconds until one token is back (Retry-After)."""
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def blocked(self, caller: str) -> int | None:
        """Seconds to wait if `caller` has no token left, without taking one; None when it may go on."""
        if not self.enabled:
            return None
        with self._lock:
            tokens = self._tokens(caller, self._clock())
        return None if tokens >= 1.0 else self._wait(tokens)

    def take(self, caller: str) -> int | None:
        """Take a token for `caller`: None if there was one, else the seconds to wait."""
        if not self.enabled:
            return None
        with self._lock:
            now = self._clock()
            tokens = self._tokens(caller, now)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                return self._wait(tokens)
            if caller not in self._buckets and len(self._buckets) >= MAX_CALLERS:
                self._forget(now)
            self._buckets[caller] = (tokens - 1.0, now)
            return None

    def _forget(self, now: float) -> None:
        full = [c for c in self._buckets if self._tokens(c, now) >= self.capacity]
        for caller in full:
            del self._buckets[caller]
        if len(self._buckets) >= MAX_CALLERS:  # all busy: drop the longest idle half
            by_age = sorted(self._buckets, key=lambda c: self._buckets[c][1])
            for caller in by_age[: len(by_age) // 2]:
                del self._buckets[caller]
