"""``shipyard score`` lowers its own CPU priority (``cpu_priority.lower_process``): every thread that exists when
it is called, and those started after, run at that nice value; it never raises one that is already lower. Run in
a child process: nice cannot be raised again without privileges, so the test process itself is left alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shipyard.components.score.cpu_priority import lower_process

CHILD = """
import json, os, threading
from shipyard.components.score.cpu_priority import lower_process
os.setpriority(os.PRIO_PROCESS, 0, 3)          # this thread starts at 3 (the threads below inherit it)
stop = threading.Event()
early = threading.Thread(target=stop.wait); early.start()   # exists before the call
very_low = threading.Thread(target=stop.wait); very_low.start()
os.setpriority(os.PRIO_PROCESS, very_low.native_id, 15)     # already lower than asked: left at 15
applied = lower_process(7)
late = threading.Thread(target=stop.wait); late.start()     # started after: inherits 7
nice = {name: os.getpriority(os.PRIO_PROCESS, t.native_id) for name, t in
        (("early", early), ("very_low", very_low), ("late", late))}
stop.set()
print(json.dumps({"applied": applied, **nice}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_every_thread_is_lowered_and_none_is_raised() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == {"applied": 7, "early": 7, "very_low": 15, "late": 7}


def test_a_nice_value_outside_0_19_is_refused() -> None:
    with pytest.raises(ValueError, match="nice must be 0-19, got 20"):
        lower_process(20)
