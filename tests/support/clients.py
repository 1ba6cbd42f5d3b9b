"""The user's side: sockets that send, read back, and notice how a connection ended."""

from __future__ import annotations

import hashlib
import socket
import threading
import time


def sha256(data: bytes) -> str:
    """A digest to compare payloads by (an assertion on 64 MiB of bytes prints 64 MiB)."""
    return hashlib.sha256(data).hexdigest()


def transfer(port: int, payload: bytes, *, chunk: int = 1 << 18, timeout: float = 60.0) -> bytes:
    """Send payload to an echo through the tunnel, half-close, and return all that came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        received = bytearray()
        error: list[BaseException] = []

        def reader() -> None:
            try:
                while True:
                    data = s.recv(1 << 20)
                    if not data:
                        return
                    received.extend(data)
            except BaseException as exc:  # noqa: BLE001 — reported to the test below
                error.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        view = memoryview(payload)
        for i in range(0, len(payload), chunk):
            s.sendall(view[i : i + chunk])
        s.shutdown(socket.SHUT_WR)
        thread.join(timeout)
        assert not thread.is_alive(), "reply did not finish in time"
        if error:
            raise error[0]
        return bytes(received)


def read_until_closed(user: socket.socket, seconds: float) -> tuple[float, str, bytes]:
    """Read until EOF or reset; return (seconds it took, "eof" or "reset", the bytes read).

    Raises AssertionError if the connection is still open after ``seconds``: no user hangs forever.
    """
    user.settimeout(seconds)
    started = time.monotonic()
    deadline = started + seconds
    data = bytearray()
    try:
        while True:
            user.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = user.recv(1 << 20)
            if not chunk:
                return time.monotonic() - started, "eof", bytes(data)
            data.extend(chunk)
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - started, "reset", bytes(data)
    except socket.timeout:
        raise AssertionError(f"user connection still open after {seconds} s") from None


def still_open(user: socket.socket, seconds: float) -> bool:
    """True if nothing happened on ``user`` (no EOF, no reset, no data) for ``seconds``."""
    user.settimeout(seconds)
    try:
        user.recv(1)  # data, EOF or an error: something happened
    except socket.timeout:
        return True
    except OSError:
        return False
    return False


class Exchange:
    """One user sending ``payload`` to an echo through the tunnel (paced), reading back what it can.

    Runs in two threads; ``join()`` returns once the connection is closed or ``timeout`` passes.
    ``outcome``: "complete" (EOF after every byte came back), "eof" or "reset" (cut short),
    or "hung" (still open at the timeout: a failure in every test).
    """

    def __init__(self, port: int, payload: bytes, *, chunk: int = 64 * 1024, pace: float = 0.0,
                 timeout: float = 60.0) -> None:
        self.payload = payload
        self.received = bytearray()
        self.outcome = "running"
        self.closed_at: float | None = None
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.settimeout(timeout)
        self._chunk, self._pace = chunk, pace
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._writer.start()

    def _write(self) -> None:
        view = memoryview(self.payload)
        try:
            for i in range(0, len(view), self._chunk):
                self.sock.sendall(view[i : i + self._chunk])
                if self._pace:
                    time.sleep(self._pace)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the reader reports how the connection ended

    def _read(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    self.outcome = "complete" if len(self.received) == len(self.payload) else "eof"
                    break
                self.received.extend(chunk)
        except socket.timeout:
            self.outcome = "hung"
        except OSError:
            self.outcome = "reset"
        self.closed_at = time.monotonic()

    def join(self, timeout: float | None = None) -> str:
        self._reader.join(timeout if timeout is not None else self.timeout + 5)
        self._writer.join(5)
        self.sock.close()
        if self._reader.is_alive():
            self.outcome = "hung"
        return self.outcome

    def intact(self) -> bool:
        """What came back is exactly the start of what was sent: no byte lost, changed or repeated."""
        return bytes(self.received) == self.payload[: len(self.received)]
