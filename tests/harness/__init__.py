"""A controller harness without root: the real Store, Fleet and Controller over an in-memory
host (FakeHost) and a clock the test moves (FakeClock), driven pass by pass without threads
(build.py), with crash points on the store's transactions and the host's mutating calls
(crash.py). tests/unit/test_controller_properties.py is built on it."""

from .build import Harness, Run, harness
from .clock import FakeClock
from .crash import Crash, Crasher
from .fakehost import INSTANCE_VERBS, FakeHost

__all__ = ["INSTANCE_VERBS", "Crash", "Crasher", "FakeClock", "FakeHost", "Harness", "Run",
           "harness"]
