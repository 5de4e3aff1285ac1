"""One running stub process, seen from the server: start, the control channel, death, kill.

``StubProcess`` starts ``python -m ...python.stub`` with its ends of two socket pairs. On the
*call* channel the caller's thread (the instance's worker) sends a call and reads its reply
itself, so a batch costs no extra thread hand-over on either side. On the *event* channel a reader
thread takes what the stub sends on its own (decoupled responses, BLS calls, log lines) and
notices when the process dies. It knows nothing of requests; ``instance.PythonInstance`` does.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from shipyard.serving_runtime.backends.python.ipc import Channel, ChannelClosed
from shipyard.serving_runtime.backends.python.shm import SlabReader, remove_files

log = logging.getLogger("shipyard.serving_runtime.backends.python")

STUB_MODULE = "shipyard.serving_runtime.backends.python.stub"
_REPLIES = ("ok", "err", "done", "fail", "fini_ok")

# The stub gets its own process group, so a terminal's Ctrl-C or a signal to the server's process
# group reaches the server only (which finalizes the model; the stub ends when its channel closes,
# so it never outlives the server). NOT its own session: with autogroup scheduling (on in most
# distributions' kernels, /proc/sys/kernel/sched_autogroup_enabled) a new session is a separate CPU
# scheduling group, and on a busy machine the stub then waited for a CPU about twice as long as in
# the server's group, costing about a third of c=16 throughput (docs/serving.md, Python models).
_OWN_PROCESS_GROUP: dict[str, Any] = (
    {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
)


class StubDied(RuntimeError):
    """The stub process ended (or was killed) while a call waited for it."""


class CallTimeout(RuntimeError):
    """The stub did not answer within the call's timeout."""


def describe_exit(returncode: int | None) -> str:
    """``exit code 3`` / ``signal SIGSEGV`` / ``still running``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class StubProcess:
    """A started stub. ``on_message(message)`` gets every message that is not a call's reply
    (on the reader thread); ``on_exit()`` runs once when the channel closes."""

    def __init__(
        self,
        prefix: str,
        reader: SlabReader,
        on_message: Callable[[tuple[Any, ...]], None],
        on_exit: Callable[[StubProcess], None],
        server_files: str = "",
    ) -> None:
        """``server_files``: the name prefix of the slabs the server writes for this instance,
        which the process removes (with its own) if the server dies without removing them."""
        self.prefix = prefix
        self.reader = reader
        self._on_message = on_message
        self._on_exit = on_exit
        self._call_lock = threading.Lock()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        events, child_events = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = (child.fileno(), child_events.fileno())
        argv = [sys.executable, "-m", STUB_MODULE, "--fd", str(fds[0]), "--events", str(fds[1]), "--prefix", prefix]
        try:
            self.proc = subprocess.Popen(
                argv + (["--server-files", server_files] if server_files else []),
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                **_OWN_PROCESS_GROUP,
            )
        finally:
            child.close()
            child_events.close()
        self.channel = Channel(parent)
        self.events = Channel(events)
        self.alive = True
        self._thread = threading.Thread(target=self._read, name=f"{prefix}-reader", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        try:
            while True:
                message = self.events.recv()
                try:
                    self._on_message(message)
                except Exception:  # a bad message must not stop the reader
                    log.exception("handling %r from the Python model process %d failed", message[0], self.pid)
        except ChannelClosed:
            pass
        finally:
            self.alive = False
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.reader.forget(self.prefix)
            remove_files(self.prefix)
            self._on_exit(self)

    def call(self, message: tuple[Any, ...], timeout_s: float | None) -> tuple[Any, ...]:
        """Send ``message`` and read its reply on this thread. One call at a time.

        Raises: StubDied (the process ended first), CallTimeout (no reply in ``timeout_s``; the
        channel is out of step: ``kill`` the process).
        """
        return self._exchange(message, timeout_s)

    def receive(self, timeout_s: float | None) -> tuple[Any, ...]:
        """Read the reply of a call whose message was sent ahead (``send_call`` without the slot, while
        the call before it was in progress), on this thread, once that call's reply has been read.

        Raises: StubDied, CallTimeout (as ``call``).
        """
        return self._exchange(None, timeout_s)

    def _exchange(self, message: tuple[Any, ...] | None, timeout_s: float | None) -> tuple[Any, ...]:
        """``call`` (``message`` sent first) or ``receive`` (None: it was sent already)."""
        with self._call_lock:
            if not self.alive:
                raise StubDied(self.exit_reason())
            try:
                if message is not None:
                    self.channel.send(message)
                self.channel.sock.settimeout(timeout_s)
                reply = self.channel.recv()
            except TimeoutError:
                raise CallTimeout(f"no answer in {timeout_s:g} s") from None
            except ChannelClosed:
                self.alive = False  # before the event reader notices: the next call restarts it
                self._wait_exit()
                raise StubDied(self.exit_reason()) from None
        if reply[0] not in _REPLIES:
            raise StubDied(f"the process sent {reply[0]!r} instead of a reply")
        return reply

    # -- a call driven by an event loop (``loop_call``): begin, send, then read when readable --

    def try_begin(self) -> bool:
        """Take the call slot without waiting; False when a call is in progress or the process is gone."""
        if not self._call_lock.acquire(blocking=False):
            return False
        if not self.alive:
            self._call_lock.release()
            return False
        return True

    def send_call(self, message: tuple[Any, ...]) -> None:
        """Send a call's message (the slot is taken, or the call before it is in progress and its reply
        is read first: ``receive``). Raises: ChannelClosed."""
        self.channel.send(message)

    def read_reply(self) -> tuple[Any, ...]:
        """Read the reply once the call socket is readable (the whole message follows at once).

        Raises: ChannelClosed (the process ended: ``alive`` turns False), StubDied (not a reply).
        """
        self.channel.sock.settimeout(None)
        try:
            reply = self.channel.recv()
        except ChannelClosed:
            self.alive = False
            raise
        if reply[0] not in _REPLIES:
            raise StubDied(f"the process sent {reply[0]!r} instead of a reply")
        return reply

    def end_call(self) -> None:
        """Give the call slot back."""
        self._call_lock.release()

    def _wait_exit(self) -> None:
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def send(self, message: tuple[Any, ...]) -> None:
        """Send on the event channel without waiting (BLS answers, cancellations); dropped when
        the process is gone."""
        try:
            self.events.send(message)
        except ChannelClosed:
            pass

    def exit_reason(self) -> str:
        return f"the process (pid {self.pid}) ended with {describe_exit(self.proc.poll())}"

    def kill(self) -> None:
        """SIGKILL the process and wait for the reader to notice."""
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.channel.close()
        self.events.close()
        self._thread.join(10)

    def stop(self, timeout_s: float) -> None:
        """Ask the model to finalize and exit; kill it past ``timeout_s``."""
        if self.alive:
            try:
                self.call(("fini",), timeout_s)
            except (StubDied, CallTimeout):
                pass
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill()
