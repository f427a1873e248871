"""Call targets for flow tests: imported by name, as a flow's `call:` does."""

from __future__ import annotations

import functools
import time

import asyncjobs


def add(a: int, b: int) -> int:
    return a + b


def total(values: list[int]) -> int:
    return sum(values)


async def fetch(x: object = None) -> object:
    return x


@asyncjobs.job(kind="thread", retries=2, timeout=9)
def marked(x: int) -> int:
    return x


def fails(message: str) -> None:
    raise RuntimeError(message)


class Opaque:
    """A result msgpack cannot store."""


def opaque() -> Opaque:
    return Opaque()


class AsyncCallable:
    """An object whose ``__call__`` is a coroutine function: an io job."""

    async def __call__(self, x: object = None) -> object:
        return x


async_object = AsyncCallable()
async_partial = functools.partial(fetch, "partial")


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
