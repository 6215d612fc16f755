"""Keep the tracker's open connections below its file-descriptor limit.

Every connection costs a descriptor. When ``accept()`` runs out of them, asyncio's own
accept loop logs a traceback and, in the Python versions we run on, schedules one retry
per remaining backlog entry, so the errors multiply (CPython gh-151615): thousands of
tracebacks a second and no announce answered. So the tracker accepts connections itself
and never gets there: it raises its soft descriptor limit to the hard one at start,
counts every accepted descriptor until it is closed, and stops accepting at a cap with a
margin below the limit. At the cap it closes the connection that has been idle longest
(an agent that announces sends its request at once, so it is never the idle one) and
accepts again once that descriptor is closed; when every connection is busy with a
request, new ones wait in the kernel's backlog until one finishes.
"""

import asyncio
import errno
import logging
import resource
import socket
from collections import OrderedDict

from ..errors import P2PFleetError
from ..runtime import web
from .aggregate_log import describe

# Descriptors the process needs besides connections: listening sockets, the event loop,
# stdio, the log, a manifest being read, libraries.
RESERVED_DESCRIPTORS = 64
BACKLOG = 128
# Connections accepted per wake-up of a listening socket, so one busy listener cannot
# starve the rest of the event loop.
ACCEPT_BATCH = 64
# Out of descriptors anyway (another process's fault, or ENOBUFS): try again after this.
ACCEPT_RETRY_SECONDS = 1.0
# Fewer connections than this and the tracker is not worth running.
MIN_CONNECTIONS = 16
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class DescriptorLimitError(P2PFleetError):
    """The descriptor limit leaves no room for connections."""


def raise_descriptor_limit():
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            # Linux refuses an infinite descriptor limit; the soft one stays and still holds.
            pass
    return soft, hard


def connection_cap(configured, descriptors):
    """The connection cap for a soft descriptor limit of ``descriptors``."""
    room = descriptors - RESERVED_DESCRIPTORS
    if room < MIN_CONNECTIONS:
        raise DescriptorLimitError(
            f"the descriptor limit ({descriptors}) leaves room for {max(room, 0)} connections; "
            f"raise it (LimitNOFILE= in the systemd unit, ulimit -n) to at least "
            f"{RESERVED_DESCRIPTORS + MIN_CONNECTIONS}")
    return room if configured is None else min(configured, room)


class ConnectionGate:
    """Counts connection descriptors from accept to close and paces the listeners."""

    def __init__(self, limit, errors):
        self.limit = limit
        self._errors = errors
        self.descriptors = 0          # accepted and not yet closed
        self._open = OrderedDict()    # transport -> requests in progress, least recently active first
        self._waiting = set()         # listeners paused at the cap
        self.closed_idle = 0
        self.waited_busy = 0

    def __len__(self):
        return self.descriptors

    def has_room(self, listener):
        """May ``listener`` accept one more? If not, make room and resume it when there is."""
        if self.descriptors < self.limit:
            return True
        self._waiting.add(listener)
        if not self._close_idlest():
            self.waited_busy += 1
            self._errors.report("all connections busy", logging.WARNING,
                                f"all {self.limit} connections are busy with requests: "
                                "new connections wait until one finishes")
        return False

    def _close_idlest(self):
        for transport, requests in self._open.items():
            if not requests:
                # Counted until its connection_lost, which closes the descriptor.
                del self._open[transport]
                transport.abort()
                self.closed_idle += 1
                self._errors.report("idle connections closed", logging.WARNING,
                                    f"at the connection cap ({self.limit}): closing the "
                                    "longest idle connection for each new one")
                return True
        return False

    def accepted(self):
        self.descriptors += 1

    def opened(self, transport):
        self._open[transport] = 0

    def closed(self, transport=None):
        self.descriptors -= 1
        if transport is not None:
            self._open.pop(transport, None)
        waiting, self._waiting = self._waiting, set()
        for listener in waiting:
            listener.resume()

    def request_started(self, transport):
        if transport in self._open:
            self._open[transport] += 1

    def request_finished(self, transport):
        if transport in self._open:
            self._open[transport] -= 1
            self._open.move_to_end(transport)


class _Gated(asyncio.Protocol):
    """aiohttp's protocol for one connection, seen by the gate when it opens and closes."""

    def __init__(self, gate, inner):
        self._gate = gate
        self._inner = inner
        self._transport = None

    def connection_made(self, transport):
        self._transport = transport
        self._gate.opened(transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc):
        self._gate.closed(self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data):
        self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received()

    def pause_writing(self):
        self._inner.pause_writing()

    def resume_writing(self):
        self._inner.resume_writing()


class _Listener:
    """One listening socket that accepts only while the gate has room."""

    def __init__(self, sock, gate, make_protocol, errors):
        self.sock = sock
        self._gate = gate
        self._make_protocol = make_protocol
        self._errors = errors
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self._retry = None
        self._tasks = set()
        self.resume()

    def resume(self):
        if not self._reading and self.sock.fileno() >= 0:
            self._loop.add_reader(self.sock.fileno(), self._accept)
            self._reading = True

    def _pause(self):
        if self._reading:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def close(self):
        self._pause()
        if self._retry is not None:
            self._retry.cancel()
        self.sock.close()

    def _accept(self):
        for _attempt in range(ACCEPT_BATCH):
            if not self._gate.has_room(self):
                self._pause()
                return
            try:
                conn, _address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._errors.report(f"accept {errno.errorcode.get(exc.errno, exc.errno)}", logging.ERROR,
                                    f"cannot accept connections: {exc.strerror}; "
                                    f"retrying every {ACCEPT_RETRY_SECONDS:.0f} s")
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause()
                    self._retry = self._loop.call_later(ACCEPT_RETRY_SECONDS, self.resume)
                return
            self._gate.accepted()
            task = self._loop.create_task(self._connect(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn):
        try:
            conn.setblocking(False)
            await self._loop.connect_accepted_socket(
                lambda: _Gated(self._gate, self._make_protocol()), conn)
        except Exception as exc:
            # No transport, so no connection_lost will release the descriptor.
            conn.close()
            self._gate.closed()
            self._errors.report(f"connection setup {type(exc).__name__}", logging.WARNING,
                                f"could not set up an accepted connection: {describe(exc)}")


class _Listeners:
    """The listening sockets of one site, shaped like the asyncio server aiohttp expects."""

    def __init__(self, listeners):
        self._listeners = listeners

    @property
    def sockets(self):
        return [listener.sock for listener in self._listeners]

    def close(self):
        for listener in self._listeners:
            listener.close()


def _listening_sockets(host, port):
    sockets = []
    try:
        for family, kind, proto, _canonname, address in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # Like asyncio: "[::]" serves IPv6 only; list 0.0.0.0 too for IPv4.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class GatedSite(web.BaseSite):
    """aiohttp's TCP site, accepting through a ``ConnectionGate`` instead of asyncio's loop."""

    def __init__(self, runner, host, port, gate, errors):
        super().__init__(runner, backlog=BACKLOG)
        self._host, self._port, self._gate, self._errors = host, port, gate, errors

    @property
    def name(self):
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self):
        sockets = _listening_sockets(self._host, self._port)
        await super().start()
        self._server = _Listeners([_Listener(sock, self._gate, self._runner.server, self._errors)
                                   for sock in sockets])
