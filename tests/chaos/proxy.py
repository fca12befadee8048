"""A small TCP fault proxy: put it between a client and a server to drop, delay and reset.

Faults are rolled per accepted connection (``drop_rate``: closed at once, with a reset) and
per forwarded chunk, so keep-alive connections meet them too:

* ``delay_rate`` holds a chunk from the client for ``delay`` seconds (a slow network);
* ``reset_rate`` resets both sides instead of forwarding a chunk: half the time a client
  chunk (the request never arrives), half the time a server chunk (the request landed,
  its answer is lost).

While the upstream is down the proxy resets the client at once, as a firewall would. The
knobs may change at any time; :meth:`FaultProxy.quiet` turns every fault off.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from types import TracebackType

_CHUNK = 65536


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream``, injecting faults."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        drop_rate: float = 0.0,
        reset_rate: float = 0.0,
        delay_rate: float = 0.0,
        delay: tuple[float, float] = (0.2, 0.8),
        seed: int | None = None,
    ) -> None:
        self.upstream = upstream
        self.drop_rate, self.reset_rate, self.delay_rate = drop_rate, reset_rate, delay_rate
        self.delay = delay
        self.stats: Counter[str] = Counter()
        # Not for security: a reproducible sequence of injected faults.
        self._rng = random.Random(seed)  # noqa: S311
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._stopping = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def quiet(self) -> None:
        """No more faults; connections already open carry on."""
        self.drop_rate = self.reset_rate = self.delay_rate = 0.0

    def cut_all(self) -> None:
        """Reset every open connection (as a network partition would)."""
        with self._lock:
            socks = list(self._open)
        for sock in socks:
            _reset(sock)

    def _roll(self, share: float) -> bool:
        if share <= 0:
            return False
        with self._lock:
            return self._rng.random() < share

    def _pause(self) -> float:
        with self._lock:
            return self._rng.uniform(*self.delay)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(256)
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopping.clear()
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.cut_all()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ forwarding

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.stats["connections"] += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self._roll(self.drop_rate):
            self.stats["dropped"] += 1
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            self.stats["refused"] += 1
            _reset(client)
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
        with self._lock:
            self._open.update((client, upstream))
        try:
            self._pump(client, upstream)
        finally:
            with self._lock:
                self._open.difference_update((client, upstream))
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ)
        sel.register(upstream, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select(timeout=0.5):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(_CHUNK)
                    except OSError:
                        return
                    if not data:
                        return
                    if not self._forward(data, src is client, client, upstream):
                        return
        finally:
            sel.close()

    def _forward(self, data: bytes, request: bool, client: socket.socket, upstream: socket.socket) -> bool:
        """Send one chunk on, or inject a fault; False when the connection is gone."""
        if request and self._roll(self.delay_rate):
            self.stats["delayed"] += 1
            time.sleep(self._pause())
        if self._roll(self.reset_rate / 2):
            # a request chunk: it never arrives; an answer chunk: the request landed, its answer is lost
            self.stats["reset-request" if request else "reset-answer"] += 1
            _reset(client)
            _reset(upstream)
            return False
        try:
            (upstream if request else client).sendall(data)
        except OSError:
            return False
        return True
