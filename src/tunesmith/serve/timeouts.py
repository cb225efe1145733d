"""Read timeouts uvicorn does not have: a deadline for a request's headers and one for its body.

uvicorn 0.54 times out only idle keep-alive connections (`timeout_keep_alive`, armed after a
response). A client that opens a connection and sends half a header block, or trickles a body a
byte at a time, holds a connection (and, while the server drains, the whole process) for as long
as it likes. Here:

- `header_protocol(seconds)`: uvicorn's h11 protocol, plus a timer from the moment a connection
  opens (or a keep-alive connection sends its next bytes) until the request's headers are
  complete; when it fires, the client gets 408 and the connection is closed;
- `BodyDeadline`: a wrapper of the ASGI `receive` that lets the whole body take at most
  `seconds`, then raises a 408 `APIError`, so a trickling upload ends like any refused request.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from uvicorn.protocols.http.h11_impl import H11Protocol

from tunesmith.serve.protocol import APIError

_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                     b"content-length: 37\r\n\r\nThe request headers took too long.\r\n\r\n")


def header_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline on each request's header block."""

    class HeaderTimeoutProtocol(H11Protocol):
        header_timeout = seconds

        def connection_made(self, transport) -> None:  # type: ignore[override]
            self._header_timer: Optional[asyncio.TimerHandle] = None
            self._timed_cycle = None
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def data_received(self, data: bytes) -> None:
            waiting_for_headers = self.cycle is None or self.cycle.response_complete
            if waiting_for_headers:
                self._arm()  # the next request on a keep-alive connection has begun
            super().data_received(data)
            if self.cycle is not None and self.cycle is not self._timed_cycle:
                self._timed_cycle = self.cycle  # its headers are complete
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _expired(self) -> None:
            self._header_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being served; the body deadline covers the rest
            if not self.transport.is_closing():
                self.transport.write(_TIMEOUT_RESPONSE)
                self.transport.close()

    return HeaderTimeoutProtocol


def body_timeout_error(seconds: float) -> APIError:
    return APIError(408, f"The request body took longer than {seconds:g} seconds to arrive.",
                    code="request_timeout", headers={"Connection": "close"})


class BodyDeadline:
    """An ASGI `receive` whose body messages must all arrive within `seconds` of the first call."""

    def __init__(self, receive, seconds: float):
        self._receive = receive
        self._seconds = seconds
        self._deadline: Optional[float] = None
        self._done = False

    async def __call__(self) -> dict[str, Any]:
        if self._done:
            return await self._receive()
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            self._deadline = loop.time() + self._seconds
        try:
            message = await asyncio.wait_for(self._receive(), max(self._deadline - loop.time(), 0))
        except asyncio.TimeoutError:
            self._done = True
            raise body_timeout_error(self._seconds) from None
        if message["type"] != "http.request" or not message.get("more_body"):
            self._done = True
        return message
