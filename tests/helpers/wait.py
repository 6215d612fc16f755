"""The one bounded wait: poll until something holds, fail the test naming it after a timeout."""
import time


def until(predicate, timeout, what, interval=0.05, detail=None):
    """Call ``predicate()`` every ``interval`` seconds until it returns a true value, and return
    that value. After ``timeout`` seconds fail with an AssertionError naming ``what``, the
    timeout and the last value, followed by ``detail()`` when given (a log tail, say). A
    predicate that knows the wait is hopeless raises its own AssertionError at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            message = f"{what}: not within {timeout} s (last: {value!r})"
            raise AssertionError(message + (f"\n{detail()}" if detail else ""))
        time.sleep(interval)
