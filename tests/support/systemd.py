"""A fake systemd: a datagram socket bound where NOTIFY_SOCKET points, as systemd's is."""

from __future__ import annotations

import select
import socket
import threading
import time


class FakeSystemd:
    """A datagram socket where NOTIFY_SOCKET points; a thread notes each message's arrival.

    Read it as parsed fields with their arrival times (:meth:`messages`,
    :meth:`values`), or datagram by datagram as the bytes sent (:meth:`receive`).
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        # Held while a datagram moves from the socket to the lists, so that
        # nothing_waiting() never looks between the two.
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._raw: list[bytes] = []
        self._read = 0  # how many of _raw receive() has returned
        self._messages: list[tuple[float, dict[str, str]]] = []
        self.first_wall: dict[str, float] = {}  # key -> wall time of its first arrival
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                self.sock.recv(1, socket.MSG_PEEK)  # wait for a datagram, leave it there
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                data = self.sock.recv(65536)
                self._raw.append(data)
                self._arrived.notify_all()
                fields = dict(line.split("=", 1) for line in data.decode().splitlines())
                self._messages.append((time.monotonic(), fields))
                for key in fields:
                    self.first_wall.setdefault(key, time.time())

    def messages(self) -> list[tuple[float, dict[str, str]]]:
        """(arrival time, fields) of every datagram so far."""
        with self._lock:
            return list(self._messages)

    def values(self, key: str) -> list[str]:
        """Every value sent for ``key``, in order."""
        return [m[key] for _, m in self.messages() if key in m]

    def receive(self, timeout: float = 5.0) -> bytes:
        """The next datagram not yet returned, as sent; waits up to ``timeout`` for it."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: self._read < len(self._raw), timeout):
                raise TimeoutError(f"no datagram on {self.address} within {timeout} s")
            self._read += 1
            return self._raw[self._read - 1]

    def nothing_waiting(self) -> bool:
        """No datagram sent that :meth:`receive` has not returned, in the socket or noted."""
        with self._lock:
            in_socket, _, _ = select.select([self.sock], [], [], 0)
            return not in_socket and self._read == len(self._raw)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.sock.close()
