"""The HTTP server under `jielong serve`: uvicorn, with the limits a server facing users needs
and a graceful shutdown.

    server = Server(uvicorn.Config(app, http=deadline_protocol(30), timeout_keep_alive=5),
                    admission, drain_seconds=10, replies=app.state.chat_replies)
    server.run(sockets=[sock])      # returns after SIGTERM or Ctrl-C, drained

- Read limits: a request's headers must arrive whole within `read_timeout` seconds of the
  connection opening or of its previous response (`deadline_protocol`: uvicorn's h11 protocol
  with a header deadline, which uvicorn lacks: a connection that sends nothing, or its
  headers a byte a second, is closed); its body within the same time
  (jielong.serve.body); an idle keep-alive connection closes after uvicorn's
  timeout_keep_alive; headers are at most h11's 16 KiB.
- Shutdown (SIGTERM or SIGINT, `Server.shutdown`): stop accepting connections, refuse new
  requests on open ones (503), give running requests `drain_seconds` to finish, cut the rest
  with their final event (jielong.serve.admission.Admission.drain), wait for the web chat's
  replies to be stored, then let uvicorn close the connections. The signal is not raised
  again afterwards (uvicorn does, so the process would die by it, 143, skipping the
  caller's cleanup): `serve` returns and the command closes the engine and the store and
  exits 0. A second Ctrl-C still quits at once.
- `side`: another uvicorn server (the metrics port) run and stopped with this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from jielong.serve.admission import Admission


class HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers are not whole
    `read_timeout` seconds after it opened or after its last response."""

    read_timeout = 30.0

    def connection_made(self, transport) -> None:
        self.header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self.arm()

    def arm(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
        self.header_timer = self.loop.call_later(self.read_timeout, self.late)

    def late(self) -> None:
        self.header_timer = None
        idle = self.cycle is None or self.cycle.response_complete
        if self.conn.their_state is h11.IDLE and idle and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.header_timer is not None and self.conn.their_state is not h11.IDLE:
            self.header_timer.cancel()  # the headers are in; the body has its own deadline
            self.header_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.arm()

    def connection_lost(self, exc) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        super().connection_lost(exc)


def deadline_protocol(read_timeout: float) -> type[HeaderDeadline]:
    """HeaderDeadline with its `read_timeout`, for uvicorn.Config(http=...)."""
    return type("HeaderDeadline", (HeaderDeadline,), {"read_timeout": read_timeout})


class Quiet(uvicorn.Server):
    """A uvicorn server that leaves the process's signals alone (run beside another)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class Server(uvicorn.Server):
    """uvicorn's server with the drain on shutdown, and no signal raised again after it."""

    def __init__(self, config: uvicorn.Config, admission: Admission | None = None,
                 drain_seconds: float = 10.0, replies: set | None = None,
                 side: uvicorn.Server | None = None, side_socket: socket.socket | None = None):
        super().__init__(config)
        self.admission, self.drain_seconds, self.replies = admission, drain_seconds, replies
        self.side, self.side_socket, self.side_task = side, side_socket, None
        self.cut = 0

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        before = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.side is not None and self.started:
            self.side_task = asyncio.create_task(self.side.serve(sockets=[self.side_socket]))

    async def shutdown(self, sockets=None) -> None:
        for server in getattr(self, "servers", []):
            server.close()  # no new connections while the running requests finish
        if self.admission is not None and not self.force_exit:
            self.cut = await self.admission.drain(self.drain_seconds, self.replies)
        await super().shutdown(sockets=sockets)
        if self.side_task is not None:
            self.side.should_exit = True
            await self.side_task
