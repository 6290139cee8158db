from __future__ import annotations

import threading
import time

from rackfire.control.workqueue import WorkQueue


def test_a_key_is_never_worked_twice_at_once_and_readded_keys_run_again() -> None:
    q = WorkQueue()
    running: set[str] = set()
    overlaps: list[str] = []
    seen: list[str] = []
    lock = threading.Lock()

    def handle(key: str) -> None:
        with lock:
            if key in running:
                overlaps.append(key)
            running.add(key)
            seen.append(key)
        time.sleep(0.05)
        with lock:
            running.discard(key)

    workers = [threading.Thread(target=q.run_worker, args=(handle,)) for _ in range(4)]
    for w in workers:
        w.start()
    q.add("a")
    time.sleep(0.01)
    q.add("a")  # while "a" runs: it must run once more, afterwards
    q.add("a")  # deduplicated with the previous add
    q.add("b", delay=0.1)
    time.sleep(0.4)
    q.close()
    for w in workers:
        w.join(2)
    assert overlaps == []
    assert seen.count("a") == 2 and seen.count("b") == 1


def _due(q: WorkQueue, key: str) -> float:
    return q._queued[key] - time.monotonic()


def _fail(q: WorkQueue, key: str, first: float = 1.0) -> float:
    """A worker's pass over `key` that fails: taken, retried, done."""
    q._queued[key] = 0.0  # due now, whatever its backoff
    assert q._take() == key
    delay = q.retry(key, first)
    q._done(key)
    return delay


def test_failures_back_off_per_key_and_an_event_cuts_the_wait() -> None:
    q = WorkQueue()
    assert _fail(q, "a") == 1.0
    assert _fail(q, "a") == 2.0
    assert _fail(q, "a", first=5.0) == 20.0  # a terminal problem: longer from the start
    for _ in range(10):
        _fail(q, "a")
    assert _fail(q, "a") == 60.0  # at most a minute
    assert 59 < _due(q, "a") <= 60
    assert _fail(q, "b") == 1.0  # each key on its own
    q.add_periodic("a")  # the resync does not pull a backing-off key forward
    assert _due(q, "a") > 50
    q.add("a")  # an event (a new spec, a health change) does
    assert _due(q, "a") <= 0
    q.forget("a")  # a pass that went through: the backoff starts over
    assert _fail(q, "a") == 1.0
