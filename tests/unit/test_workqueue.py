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
