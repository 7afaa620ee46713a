"""A bound on each request head, its size and the time to send it, around uvicorn's httptools protocol.

uvicorn bounds a request head only under h11 (``h11_max_incomplete_event_size``); under httptools,
which ``uvicorn[standard]`` picks, a 100 MB header is read whole, and a client that trickles its head
(or sends nothing) holds its connection for ever. ``mcdropout serve`` runs this protocol: a head over
``MCD_MAX_HEADER_BYTES`` is answered 431, one not complete ``MCD_REQUEST_READ_TIMEOUT_S`` after the
connection opened (or after its first byte, on a kept-alive connection) 408; both close the connection.

Public means only, no uvicorn internals: uvicorn takes an ``asyncio.Protocol`` class for ``http=`` and builds
one per connection; this one builds uvicorn's own httptools protocol with the same arguments and stands
in front of it on asyncio.Protocol's public methods alone (composition, not a subclass). It follows the
byte stream with its own ``httptools.HttpRequestParser`` (the parser uvicorn's protocol runs, with the same
leniency), so it sees where each head begins and ends exactly as the protocol behind it will, bodies
(Content-Length or chunked), keep-alive and pipelining included; each read is parsed here first and handed
on only when no bound is crossed. No uvicorn version is pinned for it: what it relies on is uvicorn's
documented ``http=`` class, the import path of the class ``--http httptools`` names, and that class being an
asyncio.Protocol, which tests/test_head_guard.py checks against the installed uvicorn with real servers.

The size counted is a lower bound of the head's true size, so a head within the limit is never refused: the
URL and each complete header (name, value, ``:`` and CRLF) plus the shortest request line, and every read
that arrived wholly inside an unfinished head. What a refused head can have taken in memory is thus the
limit plus at most two reads (asyncio and uvloop read up to 256 KB at a time).
"""

from __future__ import annotations

import asyncio
import functools
from http import HTTPStatus
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings

_LEAST_HEAD = len(b"GET  HTTP/1.1\r\n\r\n")  # a head's bytes besides its URL and headers, at the least


@functools.cache
def _limits() -> tuple[int, float]:
    settings = Settings()
    return settings.max_header_bytes, settings.request_read_timeout_s


class BoundedHttpTools(asyncio.Protocol):
    """uvicorn's httptools protocol behind a guard on each request head's size and time."""

    inner_class: type[asyncio.Protocol] = HttpToolsProtocol
    max_head_bytes: int | None = None  # None: MCD_MAX_HEADER_BYTES
    head_timeout_s: float | None = None  # None: MCD_REQUEST_READ_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._inner = self.inner_class(*args, **kwargs)  # as uvicorn would have built it
        limit, timeout = self.max_head_bytes, self.head_timeout_s
        if limit is None or timeout is None:
            default_limit, default_timeout = _limits()
            limit = default_limit if limit is None else limit
            timeout = default_timeout if timeout is None else timeout
        self._limit, self._timeout = limit, timeout
        self._parser = httptools.HttpRequestParser(self)  # calls on_message_begin, on_url, on_header, ...
        try:
            self._parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's protocol does
        except AttributeError:  # httptools < 0.6.3, where uvicorn's protocol has none either
            pass
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._reading_head = True  # from the connection's start, or a head's first byte, to the head's end
        self._began_in_this_read = False
        self._head_size = _LEAST_HEAD  # URL and complete headers of the head being read
        self._head_reads = 0  # bytes of the reads that came wholly inside the head being read
        self._over = False  # a complete head over the limit
        self._refused = False

    # asyncio.Protocol: parse each read here, then hand it on

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + self._timeout
        self._timer = self._loop.call_at(self._deadline, self._check_time)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._began_in_this_read = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # both parsers drop the rest of this read and read on after it, unless uvicorn's hands the
            # connection to a WebSocket protocol (then the transport sends nothing more here)
        except httptools.HttpParserError:
            self._inner.data_received(data)  # the same parser fails there too: it answers 400 and closes
            self._refused = True
            if not self._transport.is_closing():  # it took what this parser could not: fail closed
                self._transport.close()
            return
        if self._over:
            return self._too_large()
        if self._reading_head:
            if not self._began_in_this_read:
                self._head_reads += len(data)
            if max(self._head_size, self._head_reads) > self._limit:
                return self._too_large()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._refused = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # httptools parser callbacks: where each head begins and ends, and its size

    def on_message_begin(self) -> None:
        self._began_in_this_read = True
        self._head_size, self._head_reads = _LEAST_HEAD, 0
        if not self._reading_head:  # a kept-alive connection's next request: its time runs from its first byte
            self._reading_head = True
            self._deadline = self._loop.time() + self._timeout
            if self._timer is None:
                self._timer = self._loop.call_at(self._deadline, self._check_time)

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 3

    def on_headers_complete(self) -> None:
        self._reading_head = False
        if self._head_size > self._limit:
            self._over = True

    # refusals

    def _check_time(self) -> None:
        """The head timer: one per connection, moved on (not re-made) while heads end in time."""
        self._timer = None
        if self._refused or not self._reading_head:
            return
        if self._deadline - self._loop.time() > 0.001:  # a later head's deadline
            self._timer = self._loop.call_at(self._deadline, self._check_time)
        elif not self._transport.is_closing():
            self._refuse(HTTPStatus.REQUEST_TIMEOUT,
                         f"the request head did not arrive within {self._timeout:g} s (MCD_REQUEST_READ_TIMEOUT_S)")

    def _too_large(self) -> None:
        self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                     f"the request head is over {self._limit} bytes (MCD_MAX_HEADER_BYTES)")

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        self._refused = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        body = orjson.dumps({"error": message})
        self._transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                              b"connection: close\r\n\r\n%s" % (status, status.phrase.encode(), len(body), body))
        self._transport.close()
