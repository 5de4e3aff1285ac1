"""A call to a Python model's process driven by the server's event loop, with no thread between.

The scheduler's event loop sends the batch on the call socket itself and registers the socket
with the loop (``add_reader``); when the stub's reply arrives, the loop is woken by the kernel and
reads it. A batch then costs two wake-ups (the stub's, the loop's) instead of four (the worker
thread's, the stub's, the worker's again, and the loop's through ``call_soon_threadsafe``), and
no thread competes with the loop for the GIL (docs/serving.md, Python models).

Waiting for a dead process's exit status and killing a hung one block, so they run on the loop's
default executor; ``finish`` is called exactly once, on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from shipyard.serving_runtime.backends.python.ipc import ChannelClosed
from shipyard.serving_runtime.backends.python.process import StubDied, StubProcess

DIED = "died"
TIMED_OUT = "timeout"

# finish(reply, None) with the stub's reply, or finish(None, DIED / TIMED_OUT)
Finish = Callable[[tuple[Any, ...] | None, str | None], None]


def start(
    loop: asyncio.AbstractEventLoop, stub: StubProcess, message: tuple[Any, ...], timeout_s: float, finish: Finish
) -> None:
    """Send ``message`` (``stub.try_begin()`` returned True) and call ``finish`` on ``loop`` with
    the reply, or with why there is none (the process ended, or no reply within ``timeout_s``: the
    process is then killed)."""
    fd = stub.channel.sock.fileno()
    timer: asyncio.TimerHandle | None = None

    def died() -> None:
        stub.end_call()
        waited = loop.run_in_executor(None, stub._wait_exit)  # the exit status, for the message
        waited.add_done_callback(lambda _: finish(None, DIED))

    def on_readable() -> None:
        loop.remove_reader(fd)
        if timer is not None:
            timer.cancel()
        try:
            reply = stub.read_reply()
        except ChannelClosed:
            died()
            return
        except StubDied:  # out of step: not a reply
            stub.alive = False
            stub.end_call()
            loop.run_in_executor(None, stub.kill)
            finish(None, DIED)
            return
        stub.end_call()
        finish(reply, None)

    def on_timeout() -> None:
        loop.remove_reader(fd)
        stub.alive = False  # the channel is out of step: no further call may use it
        stub.end_call()
        loop.run_in_executor(None, stub.kill)
        finish(None, TIMED_OUT)

    try:
        stub.send_call(message)
    except ChannelClosed:
        stub.alive = False
        died()
        return
    loop.add_reader(fd, on_readable)
    timer = loop.call_later(timeout_s, on_timeout)
