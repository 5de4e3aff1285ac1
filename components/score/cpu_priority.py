"""The scorer's own CPU priority: a batch job's client lowers itself so that it yields the CPU it shares.

``shipyard score --url`` often runs next to what it protects: on the serving node (a sidecar, a pipeline pod
on the same node, a laptop), its own work (reading and encoding the data set, decoding answers, writing
Parquet) competes with the server and its real-time clients for the same cores. ``lower_process(nice)`` puts
every thread of this process at nice ``nice`` at least (Linux keeps a nice value per thread: ``setpriority``
on each thread of ``/proc/self/task``; threads started later inherit it from their creator). Raising is never
attempted (an unprivileged process cannot, and a process started lowered stays as low as it was).

Where the kernel groups CPU time by session (autogroup, ``/proc/sys/kernel/sched_autogroup_enabled``), nice only
ranks processes within one session: the scorer then yields to the processes of its own session (a real-time
client started from the same shell), not to a server started in another one; in a container each pod has its
own cgroup and nice ranks the pod's processes. Public: ``lower_process``.
"""

from __future__ import annotations

import os

MAX_NICE = 19


def lower_process(nice: int) -> int:
    """Every thread of this process at nice ``nice`` (0-19) or lower priority; the calling thread's nice after.
    A thread that vanished, or one the OS does not let us lower, is left as it is.

    Raises: ValueError for ``nice`` outside 0-19.
    """
    if not 0 <= nice <= MAX_NICE:
        raise ValueError(f"nice must be 0-{MAX_NICE}, got {nice}")
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]  # no /proc: the calling thread (and threads started after it) only
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            continue
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except OSError:
        return 0
