"""What media a request may make the server fetch, read or decode.

vLLM fetches any http(s) URL a request names, so anyone who can send a request could make
the server call internal addresses (loopback, private networks, cloud metadata). By
default zspa-serve refuses a media URL whose host is, or resolves to, an address that is
not public, at every redirect; ``--allow-private-media-urls`` lifts that. Media that
cannot be read or decoded (local files without ``--allowed-local-media-path``, images
past the pixel limit, truncated or corrupt data) is the client's error: HTTP 400 naming
the URL, never a 500.

Two places apply it: the request layer (zspa_serve/middleware.py) checks every media URL of
a chat request before vLLM sees it, so its 400 names the field
(``messages[i].content[j].image_url``); ``ZspaMediaConnector``, the connector vLLM loads
media through (``VLLM_MEDIA_CONNECTOR=zspa``, set by zspa-serve), fetches through vLLM's own code on
a session that checks every connection's address again (at each redirect, and after DNS
answered otherwise than for the first check), and turns decoding failures into 400s.
Behind an HTTP proxy (``HTTPS_PROXY``), the proxy's own address is checked as well.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from urllib.parse import urlsplit

from zspa_vllm import envs

logger = logging.getLogger("zspa_vllm")

CONNECTOR_NAME = "zspa"
# decoded image size bound (width x height): PIL's own bomb limit is 178,956,970
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
URL_SCHEMES = ("http", "https", "data", "file")


def private_urls_allowed() -> bool:
    return envs.get(envs.ALLOW_PRIVATE_MEDIA_URLS)


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])  # an IPv6 zone id is not part of the address
    if getattr(ip, "ipv4_mapped", None) is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
        return True
    except ValueError:
        return False


def _refusal(host: str | None, addresses: list[str]) -> str | None:
    blocked = sorted({a for a in addresses if not is_public(a)})
    if not blocked:
        return None
    return (
        f"media URL host {host!r} is (or resolves to) a non-public address ({', '.join(blocked)}); "
        f"the server does not fetch such URLs unless started with --allow-private-media-urls"
    )


async def url_refusal(url: str) -> str | None:
    """Why an http(s) media URL may not be fetched (None: it may), resolving its host."""
    if private_urls_allowed():
        return None
    host = urlsplit(url).hostname
    if not host:
        return f"media URL {url[:80]!r} has no host"
    if _is_literal(host):
        return _refusal(host, [host])
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as error:
        return f"media URL host {host!r} does not resolve ({error})"
    return _refusal(host, [info[4][0] for info in infos])


def url_scheme(url: str) -> str:
    """``urlsplit(url).scheme.lower()``, read from the text up to the first colon: a data
    URL holds megabytes, which urlsplit would copy several times over."""
    colon = url.find(":")
    return urlsplit(url[: colon + 1]).scheme.lower() if colon >= 0 else ""


def scheme_refusal(url: str) -> str | None:
    scheme = url_scheme(url)
    if scheme not in URL_SCHEMES:
        return f"media URL scheme {scheme or '(none)'!r} is not one of {list(URL_SCHEMES)}"
    return None


class PrivateAddressRefused(Exception):
    """A connection the fetch would make to a non-public address (not an OSError: aiohttp
    would wrap that as a connection failure, which vLLM retries)."""


def _check_literal(url) -> None:
    host = getattr(url, "host", None)
    if host and _is_literal(host) and (reason := _refusal(host, [host])):
        raise PrivateAddressRefused(reason)


def guarded_session():
    """An aiohttp session that refuses non-public addresses when a connection is made: a
    name through its resolver (it may resolve otherwise than for the request layer's
    check), an address literal at the start and at every redirect."""
    import aiohttp
    from yarl import URL

    class PublicOnlyResolver(aiohttp.ThreadedResolver):
        async def resolve(self, host, port=0, family=socket.AF_INET):
            hosts = await super().resolve(host, port, family)
            if not private_urls_allowed() and (reason := _refusal(host, [h["host"] for h in hosts])):
                raise PrivateAddressRefused(reason)
            return hosts

    async def on_request_start(session, context, params):
        if not private_urls_allowed():
            _check_literal(params.url)

    async def on_request_redirect(session, context, params):
        location = params.response.headers.get("Location")
        if location and not private_urls_allowed():
            _check_literal(params.response.url.join(URL(location)))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    trace.on_request_redirect.append(on_request_redirect)
    connector = aiohttp.TCPConnector(resolver=PublicOnlyResolver())
    return aiohttp.ClientSession(trust_env=True, connector=connector, trace_configs=[trace])


def _register() -> None:
    """Register ``ZspaMediaConnector`` under ``CONNECTOR_NAME`` (idempotent)."""
    from vllm.connections import HTTPConnection
    from vllm.exceptions import VLLMError, VLLMValidationError
    from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector

    if CONNECTOR_NAME in MEDIA_CONNECTOR_REGISTRY.name2class:
        return

    class GuardedHTTPConnection(HTTPConnection):
        # vLLM's connection, its session swapped for guarded_session()
        async def get_async_client(self):
            if self._async_client is None or not self.reuse_client:
                self._async_client = guarded_session()
            return self._async_client

    connection = GuardedHTTPConnection()

    def field_of(media_io) -> str:
        kind = type(media_io).__name__.removesuffix("MediaIO").lower() or "media"
        return f"{kind}_url"

    def shown(url: str) -> str:
        return url.partition(",")[0] + ",..." if url[:5].lower() == "data:" else url[:120]

    def bad_media(error: Exception, url: str, field: str) -> Exception:
        refused = next((e for e in _chain(error) if isinstance(e, PrivateAddressRefused)), None)
        if refused is not None:
            return VLLMValidationError(str(refused), parameter=field)
        if isinstance(error, VLLMError):  # vLLM's own answer (a 422 for a failed fetch)
            return error
        logger.info("zspa-serve: refused media %s: %r", shown(url), error)
        return VLLMValidationError(f"{field} {shown(url)!r} cannot be read: {error}", parameter=field)

    @MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR_NAME)
    class ZspaMediaConnector(MediaConnector):
        """vLLM's connector on a guarded session, with media it cannot read as a 400."""

        def __init__(self, *args, **kwargs) -> None:
            kwargs.setdefault("connection", connection)
            super().__init__(*args, **kwargs)

        async def load_from_url_async(self, url, media_io, *, fetch_timeout=None):
            try:
                return await super().load_from_url_async(url, media_io, fetch_timeout=fetch_timeout)
            except VLLMValidationError:
                raise
            except Exception as error:  # noqa: BLE001  (client data that cannot be read is the client's error)
                raise bad_media(error, url, field_of(media_io)) from error

        def load_from_url(self, url, media_io, *, fetch_timeout=None):
            # the synchronous path (offline use; the server loads asynchronously): the
            # address is checked once, before a fetch that follows redirects unchecked
            if url_scheme(url) in ("http", "https"):
                if reason := asyncio.run(url_refusal(url)):
                    raise VLLMValidationError(reason, parameter=field_of(media_io))
            try:
                return super().load_from_url(url, media_io, fetch_timeout=fetch_timeout)
            except VLLMValidationError:
                raise
            except Exception as error:  # noqa: BLE001
                raise bad_media(error, url, field_of(media_io)) from error

        def _load_file_url(self, url_spec, media_io):
            if self.allowed_local_media_path is None:  # vLLM raises a RuntimeError: a 500
                raise VLLMValidationError(
                    f"{field_of(media_io)}: file URLs are refused (the server was not started with "
                    "--allowed-local-media-path)",
                    parameter=field_of(media_io),
                )
            return super()._load_file_url(url_spec, media_io)


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def install() -> None:
    """In the API-server process (the endpoint plugin's attach_router): make the connector
    loadable. The pixel bound is vLLM's own check (VLLM_MAX_IMAGE_PIXELS, which zspa-serve
    sets); PIL's bomb error past its own limit is one of the errors the connector turns
    into a 400."""
    _register()
