"""HTTPS, as every real call goes: the server's certificate checked against the authorities the
machine trusts (`SSL_CERT_FILE` adds a company's own, as httpx reads it), a reply streamed whole
over TLS and the connection kept for the next; and a certificate that fails the check refused in
one line that says why, before a request (and the key in it) is sent."""

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trustme

from bot.errors import ConnectionFailed
from bot.providers.openai_compat import OpenAICompatProvider
from bot.transport import make_client
from tests.bot.providers.test_openai_compat import collect
from tests.conftest import API_KEY
from tests.fake_openrouter import FakeOpenRouter, Reply


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def https_server(certificate: trustme.LeafCert) -> AsyncIterator[FakeOpenRouter]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)
    async with FakeOpenRouter(tls=context) as fake:
        yield fake


@pytest.fixture
def trusted(authority: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The authority named in SSL_CERT_FILE, as a company's own would be."""
    bundle = tmp_path / "company-ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    yield bundle


async def test_a_reply_streams_whole_over_https_on_one_kept_connection(authority: trustme.CA, trusted):
    async with https_server(authority.issue_cert("localhost")) as server:
        server.enqueue(Reply(text="Over TLS, every word.", chunk_words=1))
        url = server.base_url
        async with make_client(httpx.Timeout(10)) as http:
            provider = OpenAICompatProvider(http, server.base_url, API_KEY)
            first, _, completion = await collect(provider)
            second, _, _ = await collect(provider)
    assert url.startswith("https://localhost:")
    assert first == "Over TLS, every word." and completion.finish_reason == "stop"
    assert second
    assert server.connections == 1  # one handshake, then the same connection
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {API_KEY}"


PAST = datetime.now(UTC) - timedelta(days=30)

REFUSALS = {
    # name: (the certificate the server shows, is its authority in SSL_CERT_FILE, the reason given)
    "an authority nobody named": (lambda ca: ca.issue_cert("localhost"), False, "unable to get local issuer"),
    "another host's name": (lambda ca: ca.issue_cert("elsewhere.example"), True, "Hostname mismatch"),
    "expired": (
        lambda ca: ca.issue_cert("localhost", not_before=PAST, not_after=PAST + timedelta(days=1)),
        True,
        "certificate has expired",
    ),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
async def test_a_certificate_that_fails_the_check_is_refused_in_one_line(
    case: str, authority: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    issue, named, reason = REFUSALS[case]
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    if named:
        bundle = tmp_path / "company-ca.pem"
        authority.cert_pem.write_to_path(str(bundle))
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    else:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    async with https_server(issue(authority)) as server:
        url = server.base_url
        async with make_client(httpx.Timeout(10)) as http:
            provider = OpenAICompatProvider(http, server.base_url, API_KEY)
            with pytest.raises(ConnectionFailed) as failure:
                await collect(provider)
    message = str(failure.value)
    assert "\n" not in message and API_KEY not in message
    assert message.startswith(f"the certificate of {url} is not trusted (")
    assert reason in message
    assert message.endswith("name its file in SSL_CERT_FILE")
    assert server.chat_requests == []  # nothing, the key included, reached that server


class Tunnel:
    """An HTTP proxy that opens CONNECT tunnels, as a company's does: it sees where the client goes,
    never what it sends (TLS runs end to end through it)."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._open, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _open(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        method, target, _ = head.split(" ", 2)
        self.asked.append(f"{method} {target}")
        host, port = target.rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(2**16):
                sink.write(data)
                await sink.drain()
            sink.close()

        await asyncio.gather(
            pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True
        )


async def test_https_goes_through_the_proxy_https_proxy_names_as_a_tunnel(
    authority: trustme.CA, trusted, monkeypatch: pytest.MonkeyPatch
):
    tunnel = Tunnel()
    async with https_server(authority.issue_cert("localhost")) as server, tunnel as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        server.enqueue(Reply(text="Through the tunnel."))
        url = server.base_url
        async with make_client(httpx.Timeout(10)) as http:
            text, _, _ = await collect(OpenAICompatProvider(http, url, API_KEY))
    assert text == "Through the tunnel."
    assert tunnel.asked == [f"CONNECT {url.split('/')[2]}"]  # where, and nothing of what
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {API_KEY}"
