"""uvicorn's httptools protocol with a bound on each request head: its size and the time to send it.

uvicorn bounds a request head only under h11 (``h11_max_incomplete_event_size``); under httptools,
which ``uvicorn[standard]`` picks, a 100 MB header is read whole, and a client that trickles its head
(or sends nothing) holds its connection for ever. ``mcdropout serve`` runs this protocol: a head over
``MCD_MAX_HEADER_BYTES`` is answered 431, one not complete ``MCD_REQUEST_READ_TIMEOUT_S`` after the
connection opened (or after its first byte, on a kept-alive connection) 408; both close the connection.
"""

from __future__ import annotations

import asyncio
import functools
from http import HTTPStatus

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings


@functools.cache
def _limits() -> tuple[int, float]:
    settings = Settings()
    return settings.max_header_bytes, settings.request_read_timeout_s


class BoundedHttpTools(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_limit, self._head_timeout = _limits()
        self._head_bytes = 0  # received while the head is incomplete (httptools buffers a header until it ends)
        self._head_size = 0  # of the head parsed so far: URL, header names and values
        self._reading_head = True
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(self._head_timeout, self._too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._reading_head and not self.transport.is_closing():
            self._head_bytes += len(data)  # a chunk's body bytes too, when the head ends in a later chunk
            if self._head_bytes > self._head_limit:
                self._too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_bytes = self._head_size = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout, self._too_slow)

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._stop_timer()
        if self._head_size > self._head_limit:  # a whole head that came in one chunk
            self._too_large()
        if not self._refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _too_large(self) -> None:
        self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                     f"the request head is over {self._head_limit} bytes (MCD_MAX_HEADER_BYTES)")

    def _too_slow(self) -> None:
        self._head_timer = None
        if self._reading_head and not self.transport.is_closing():
            self._refuse(HTTPStatus.REQUEST_TIMEOUT,
                         f"the request head did not arrive within {self._head_timeout:g} s (MCD_REQUEST_READ_TIMEOUT_S)")

    def _stop_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        self._refused = True
        body = orjson.dumps({"error": message})
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, status.phrase.encode(), len(body), body))
        self.transport.close()
