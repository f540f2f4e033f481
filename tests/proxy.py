"""
A TCP proxy on 127.0.0.1 that delays what it forwards, for the tests that need races.

::

    with Proxy(redis_server.port, delay=0.05) as proxy:
        location = f"redis://127.0.0.1:{proxy.port}/0"
        ...
        proxy.delay = 0.001      # applies to data read from now on
        proxy.refuse = True      # new connections are closed at once
        proxy.drop()             # every open connection is reset

It runs in threads of the test process, which gevent did not patch: it works
while the test blocks. Each direction of each connection has a reader thread
that stamps what it reads and a writer thread that forwards it ``delay``
seconds later, so that latency adds up without limiting throughput, and
bytes keep their order.

"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time

__all__ = ["Proxy"]


class Proxy:
    """
    Forward connections to ``127.0.0.1:target``, each byte ``delay`` seconds late.

    Set :attr:`upstream_delay` and :attr:`downstream_delay` to delay one
    direction only: towards the target, and back from it.

    """

    def __init__(self, target: int, delay: float = 0.0) -> None:
        self.target = target
        #: Seconds added to what goes to the target, and to what comes back.
        self.upstream_delay = delay
        self.downstream_delay = delay
        #: When true, a new connection is accepted and reset at once.
        self.refuse = False
        #: Connections accepted, refused ones included.
        self.accepted = 0
        #: Most connections forwarded at once.
        self.peak = 0
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._ended: dict[tuple, int] = {}  # directions of a pair that reached their end
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stopping = False
        self._start(self._accept)

    @property
    def delay(self) -> float:
        return max(self.upstream_delay, self.downstream_delay)

    @delay.setter
    def delay(self, value: float) -> None:
        self.upstream_delay = self.downstream_delay = value

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def connections(self) -> int:
        """How many connections are forwarded now."""
        with self._lock:
            return len(self._pairs)

    def drop(self) -> None:
        """Reset every connection forwarded now, on both sides."""
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._reset(pair)

    def stop(self) -> None:
        """Stop accepting, reset every connection, and wait for every thread to end."""
        self._stopping = True
        # Closing a socket doesn't interrupt accept() in another thread: shut it down.
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self.drop()
        for thread in list(self._threads):
            thread.join(5)
        alive = [thread for thread in self._threads if thread.is_alive()]
        assert not alive, f"proxy threads still running: {alive}"

    # Threads.

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # stopped
            self.accepted += 1
            if self.refuse or self._stopping:
                _abort(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                _abort(client)
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, server)
            with self._lock:
                self._pairs.add(pair)
                self.peak = max(self.peak, len(self._pairs))
            self._threads = [thread for thread in self._threads if thread.is_alive()]
            self._pipe(pair, client, server, lambda: self.upstream_delay)
            self._pipe(pair, server, client, lambda: self.downstream_delay)

    def _pipe(self, pair, source: socket.socket, sink: socket.socket, delay) -> None:
        chunks: queue.SimpleQueue = queue.SimpleQueue()
        self._start(self._read, source, chunks, delay)
        self._start(self._write, pair, sink, chunks)

    def _read(self, source: socket.socket, chunks: queue.SimpleQueue, delay) -> None:
        try:
            while data := source.recv(65536):
                chunks.put((time.monotonic() + delay(), data))
        except OSError:
            pass
        chunks.put((time.monotonic() + delay(), b""))

    def _write(self, pair, sink: socket.socket, chunks: queue.SimpleQueue) -> None:
        while True:
            due, data = chunks.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the latency this proxy adds
            try:
                if not data:
                    sink.shutdown(socket.SHUT_WR)  # the end of the stream, in order
                    break
                sink.sendall(data)
            except OSError:
                self._reset(pair)
                return
        with self._lock:
            if pair not in self._pairs:
                return
            # The second direction to end ends the connection.
            ended = self._ended[pair] = self._ended.get(pair, 0) + 1
        if ended == 2:
            self._reset(pair)

    def _reset(self, pair) -> None:
        with self._lock:
            if pair not in self._pairs:
                return
            self._pairs.discard(pair)
            self._ended.pop(pair, None)
        for sock in pair:
            _abort(sock)


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` with a reset, as a crashed peer or a dropped link does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes up the threads blocked on it
    except OSError:
        pass
    sock.close()
