"""Waiting on a condition in async tests (never a fixed sleep)."""
import asyncio


async def until(predicate, timeout: float = 60.0, interval: float = 0.05):
    """The first truthy value of `await predicate()`, polled every `interval` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if value := await predicate():
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
