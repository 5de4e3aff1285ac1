"""The control channel between the server and a Python model's process: framed messages on a
Unix socket pair.

A message is a small tuple (its kind first) pickled with a 4-byte length prefix; tensors never
travel here, only their ``shm.TensorRef`` descriptors. ``send`` may be called from any thread
(a lock keeps frames whole); ``recv`` from one reader thread.
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading
from typing import Any

_LEN = struct.Struct("<I")


class ChannelClosed(EOFError):
    """The other side closed the socket (or died)."""


class Channel:
    """One end of the socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        """Raises: ChannelClosed when the other side is gone."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            with self._send_lock:
                self.sock.sendall(_LEN.pack(len(data)) + data)
        except OSError as exc:
            raise ChannelClosed(f"the other process closed the channel ({exc})") from None

    def _exact(self, count: int) -> bytes:
        chunks: list[bytes] = []
        while count:
            try:
                chunk = self.sock.recv(count)
            except TimeoutError:
                raise
            except OSError as exc:
                raise ChannelClosed(f"the channel failed ({exc})") from None
            if not chunk:
                raise ChannelClosed("the other process closed the channel")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def recv(self) -> tuple[Any, ...]:
        """The next message. Raises: ChannelClosed at the end of the stream."""
        (length,) = _LEN.unpack(self._exact(_LEN.size))
        message = pickle.loads(self._exact(length))
        assert isinstance(message, tuple)
        return message

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
