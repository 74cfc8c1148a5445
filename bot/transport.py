"""HTTP under httpx on aiohttp's connection handling: the same httpx API, a cheaper read per chunk.

httpx's own transport (httpcore, anyio, h11) costs about three times a plain asyncio read per
streamed chunk; aiohttp's is close to the plain read. Every aiohttp failure is mapped to the httpx
error that names it, so the one-line messages stay true: a refused connection is a ConnectError
(the httpx-aiohttp package maps it to a timeout), a timeout is a timeout, a stream cut mid-way is a
read error.

Idle connections stay pooled with no timer on the loop: aiohttp's 15 s sweep is a timer, and under
SimCord every timer due within a settle is work the bot waits out in real time. A connection the
peer closed is dropped when its close arrives, and the kernel probes an idle one (15 s, then 3×5 s),
so a peer that vanished without a word is found too.

A request may ask for its body to be read at a pace (the `read_pace` extension, in seconds): after
a read, the next waits for the next tick of the pace (of the stream's slot in it, at a long pace),
what arrives meanwhile waiting in aiohttp's buffer to come out in one piece. A reply streamed a
token per event then costs a wake-up of its reader per pace instead of one per token; the end of
the body ends a wait at once, so the end is seen as soon as it comes.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx
from httpx._client import UseClientDefault  # the types of send's own signature
from httpx._types import AuthTypes

#: Seconds a pooled connection idles before the kernel probes it, between probes, and probes unanswered.
PROBES = (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))


def _probed_socket(addr_info: aiohttp.AddrInfoType) -> socket.socket:
    """A socket the kernel keeps alive: a dead peer is found while the connection idles in the pool."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=kind, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in PROBES:
        if hasattr(socket, option):  # Linux names all three; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    return sock


@contextmanager
def _mapped(connecting: bool) -> Iterator[None]:
    """Raise the httpx error for an aiohttp one: the most specific class decides."""
    try:
        yield
    except httpx.HTTPError:
        raise
    except aiohttp.ClientConnectorError as exc:  # refused, unreachable, a name that does not resolve
        raise httpx.ConnectError(str(exc)) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "timed out") from exc
    except aiohttp.SocketTimeoutError as exc:  # connected, but no data came: for the head, or mid-body
        raise httpx.ReadTimeout(str(exc) or "timed out") from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise (httpx.ConnectTimeout if connecting else httpx.ReadTimeout)(str(exc) or "timed out") from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(str(exc)) from exc
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        raise httpx.RemoteProtocolError(str(exc) or "the server closed the connection") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise (httpx.ConnectError if connecting else httpx.ReadError)(str(exc) or type(exc).__name__) from exc


class _Body(httpx.AsyncByteStream):
    """A response body read as aiohttp receives it: each chunk as it arrives, or with a pace, all
    that arrived in the last `pace` seconds at once.

    A connection that drops while a read waits out its pace takes the words of those last moments
    with it (aiohttp raises the drop before it hands out what it holds, as it does unpaced when
    both come in one turn of the loop). The reply is cut off either way: it is retried or ends the
    dialogue, and is never recorded half-written."""

    def __init__(self, response: aiohttp.ClientResponse, pace: float, ticks: _Ticks):
        self._response = response
        self._pace = pace
        self._ticks = ticks
        self._end = _End()
        self._slot = ticks.slot(pace) if pace else 0.0
        #: The httpx response this body is read for, whose stream httpx points back at it.
        self.owner: weakref.ref[httpx.Response] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        if self._pace:
            # The reader keeps its end callbacks: one of this body's own would make a cycle.
            content.on_eof(self._end.wake)
        watch = _Watch.start(self._response)
        try:
            with _mapped(connecting=False):
                # readany itself, not its iterator: one call fewer per chunk.
                while chunk := await content.readany():
                    yield chunk
                    if self._pace and not content.is_eof():  # at the end, the rest is here already
                        await self._next_tick()
        finally:
            if watch is not None:
                watch.stop()

    async def _next_tick(self) -> None:
        """Wait for the next tick of the body's slot of the pace, or the end of the body."""
        self._end.waiting = self._ticks.next(self._pace, self._slot)
        try:
            await self._end.waiting
        finally:
            self._end.waiting = None

    async def aclose(self) -> None:
        self._response.release()
        # httpx points the response's stream back at the response, a reference cycle per call,
        # left to the cycle collector: at 300 dialogues it freed some 70,000 objects in one pause
        # of 0.18 s (docs/benchmarks.md section 2). Cut once the body is closed, each call's
        # objects go as soon as the caller lets the response go.
        owner = self.owner() if self.owner is not None else None
        if owner is not None:
            owner.stream = _CLOSED


class _End:
    """What the end of a body wakes: the wait for the pace's next tick, if one is under way."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(None)


#: What a closed response's stream becomes: nothing more to read.
_CLOSED = httpx.ByteStream(b"")


class _Ticks:
    """The pace's ticks, shared. A pace is cut into slots about `SLOT` seconds apart, and streams
    take the slots in turn: each waits for the next tick of its own slot, one timer per tick wakes
    every stream waiting for it, and a quiet loop wakes at most once a slot.

    At a pace of `SLOT` or less there is one slot, the multiples of the pace. At a longer pace, all
    streams on the same ticks would be read in one burst of the whole pace's words: at 300 streams
    and 0.25 s, work that a dialogue whose turn ended in it waited out, a relay gap p99 of about
    0.17 s (docs/benchmarks.md section 2). In slots, each tick reads a share of the streams."""

    #: Seconds between two slots' ticks.
    SLOT = 0.05

    def __init__(self) -> None:
        self._due: dict[float, list[asyncio.Future[None]]] = {}
        self._taken = 0

    def slot(self, pace: float) -> float:
        """Return the next stream's slot: how far its ticks fall after the multiples of `pace`."""
        slots = max(1, round(pace / self.SLOT))
        self._taken += 1
        return self._taken % slots * pace / slots

    def next(self, pace: float, slot: float = 0.0) -> asyncio.Future[None]:
        """Return a future done at the next tick of the slot (or sooner, by whoever holds it)."""
        loop = asyncio.get_running_loop()
        at = ((loop.time() - slot) // pace + 1) * pace + slot
        waiting = loop.create_future()
        if (waiters := self._due.get(at)) is None:
            self._due[at] = waiters = []
            loop.call_at(at, self._ring, at)
        waiters.append(waiting)
        return waiting

    def _ring(self, at: float) -> None:
        for waiting in self._due.pop(at):
            if not waiting.done():  # one the end of its body woke, or a stop cancelled
                waiting.set_result(None)


class _Watch:
    """The read timeout of a body: no data for that long fails the read.

    aiohttp keeps it with a timer it moves on every piece that arrives, a timer made and cancelled
    per streamed token. This looks instead a few times per timeout whether any came meanwhile, so a
    silent peer is found between one and one and a half timeouts after its last byte, never sooner.
    aiohttp's own timer still covers the wait for the head, and for a body's first byte."""

    #: Looks per timeout.
    LOOKS = 4

    def __init__(self, content: aiohttp.StreamReader, timeout: float):
        self._content = content
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._seen = content.total_bytes
        self._quiet_since = self._loop.time()
        self._timer = self._loop.call_later(timeout / self.LOOKS, self._look)

    @classmethod
    def start(cls, response: aiohttp.ClientResponse) -> _Watch | None:
        """Take the read timeout of the response's connection over; None where there is none to
        keep (no timeout, or the whole body already read and the connection given back)."""
        connection = response.connection
        protocol = connection.protocol if connection is not None else None
        timeout = protocol.read_timeout if protocol is not None else None
        if protocol is None or not timeout:
            return None
        # The connection's next request sets its own again.
        protocol.read_timeout = None
        return cls(response.content, timeout)

    def _look(self) -> None:
        now = self._loop.time()
        if self._content.is_eof() or self._content.exception() is not None:
            return
        if self._content.total_bytes != self._seen:
            self._seen, self._quiet_since = self._content.total_bytes, now
        elif now - self._quiet_since >= self._timeout:
            self._content.set_exception(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))
            return
        self._timer = self._loop.call_later(self._timeout / self.LOOKS, self._look)

    def stop(self) -> None:
        self._timer.cancel()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session, made on first use (it needs the running loop)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._ticks = _Ticks()
        # HTTP(S)_PROXY read once, as httpx reads them when a client is made. aiohttp's own
        # trust_env would read them, and ~/.netrc, in a thread on every request.
        self._proxies = {k: v for k, v in urllib.request.getproxies().items() if k in ("http", "https")}

    def _proxy_for(self, url: httpx.URL) -> str | None:
        """The proxy a request goes through, unless NO_PROXY names its host."""
        proxy = self._proxies.get(url.scheme)
        return None if proxy is None or urllib.request.proxy_bypass(url.host) else proxy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            # httpx's certificates (certifi), as before.
            connector = aiohttp.TCPConnector(
                limit=0, ssl=httpx.create_ssl_context(), keepalive_timeout=None, socket_factory=_probed_socket
            )
            # No cookie jar at this level either: aiohttp's own would keep what a named host sets
            # (it refuses only IP addresses) and send it back, under httpx's empty one.
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        timeout = request.extensions.get("timeout", {})
        with _mapped(connecting=True):
            response = await self._session.request(
                request.method,
                str(request.url),
                headers=list(request.headers.multi_items()),
                data=await request.aread() or None,
                allow_redirects=False,
                proxy=self._proxy_for(request.url),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        body = _Body(response, request.extensions.get("read_pace", 0.0), self._ticks)
        answer = httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=body,
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )
        body.owner = weakref.ref(answer)
        return answer

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        """Keep none of the response's cookies."""


class _Client(httpx.AsyncClient):
    """httpx's client, keeping no cookies and handing a request straight to its transport.

    The APIs it calls know a caller by its key, and httpx reads every response's cookies into a jar
    through urllib's request and message classes, which cost 6 % of a one-word turn's instructions
    (docs/benchmarks.md section 11), for state no one asked to keep."""

    _none = _NoCookies()

    def __init__(self, timeout: httpx.Timeout, transport: AiohttpTransport):
        super().__init__(timeout=timeout, transport=transport)
        self._direct = transport

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: AuthTypes | UseClientDefault | None = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: bool | UseClientDefault = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        """Send as httpx does, without the machinery this client never uses. httpx's own send runs
        an auth flow and a redirect loop (two generators and the hooks between) and wraps the body
        to time it: about as much CPU as building the request, on every call. This client has no
        auth, follows no redirects, has no hooks, and mounts no proxy (a client given its own
        transport reads none from the environment; the transport reads them itself). Asked for
        any of that, httpx's own send does it."""
        if (
            auth is not httpx.USE_CLIENT_DEFAULT
            or follow_redirects is True
            or self.auth is not None
            or self.follow_redirects
            or request.url.userinfo
            or any(self.event_hooks.values())
        ):
            return await super().send(request, stream=stream, auth=auth, follow_redirects=follow_redirects)
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        request.extensions.setdefault("timeout", self.timeout.as_dict())
        try:
            response = await self._direct.handle_async_request(request)
        except httpx.RequestError as exc:
            exc.request = request  # as httpx's send names the request a failure was for
            raise
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response

    @property
    def cookies(self) -> httpx.Cookies:
        return self._none

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        raise AttributeError("the engine's HTTP client keeps no cookies")


def make_client(timeout: httpx.Timeout) -> httpx.AsyncClient:
    """Return the engine's HTTP client: httpx's API on the aiohttp transport, without a cookie jar."""
    return _Client(timeout=timeout, transport=AiohttpTransport())
