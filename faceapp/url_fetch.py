"""Fetching an image from a client-given URL under the remote-fetch rules.

The rules, as clients see them: docs/API.md, "image_url: the remote-fetch rules".

Each hop's URL is checked (scheme, credentials, host, port, allow-list), its host name is resolved
once, every address it resolves to is checked, and the connection goes to the address that was
checked (:class:`PinnedAddressAdapter`), so a second DNS answer cannot point it elsewhere.
Redirects are followed here, not by requests, so every hop goes through the same checks.
Whether the bytes are an image is for the decoder to say, not the Content-Type header.
``URL_DEADLINE`` covers the whole download, every hop's connect, status line, headers and body
(:mod:`faceapp.deadlines` shuts the sockets down when it passes); ``URL_READ_TIMEOUT`` bounds
each wait for data within it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import ReadTimeoutError

from faceapp import metrics
from faceapp.config import split_list
from faceapp.deadlines import DeadlineAdapter, overall_deadline
from faceapp.errors import FaceappError, human_bytes
from faceapp.version import __version__

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FIELD = "image_url"
_CHUNK_BYTES = 64 * 1024
_MAX_URL_CHARS = 2048
_HEADERS = {
    "User-Agent": f"faceapp/{__version__} (image_url fetch)",
    "Accept": "image/*, */*;q=0.5",
    # Only encodings urllib3 always decodes, so the byte cap counts what the decoder will see.
    "Accept-Encoding": "gzip, deflate",
}

# A bracketed IPv6 literal or a name without brackets, colons or '@', then an optional numeric
# port. Stricter than urlsplit, so requests/urllib3 cannot parse the host differently from us.
_NETLOC = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^\[\]:@]+)(?::(?P<port>[0-9]{1,5}))?$")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Networks that carry an IPv4 address inside an IPv6 one; the IPv4 address decides.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: local-use, never public
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # "this host on this network": no real peer


@dataclass(frozen=True)
class FetchPolicy:
    """The limits one image_url download runs under (docs/API.md, "Configuration")."""

    allowed_hosts: tuple[str, ...] = ()  # whole host names; empty = any public host
    allow_private: bool = False  # URL_ALLOW_PRIVATE_NETWORKS
    connect_timeout: float = 3.0
    read_timeout: float = 5.0
    deadline: float = 15.0  # overall, across redirects and slow bodies
    max_redirects: int = 3
    max_bytes: int = 10 * 1024 * 1024

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FetchPolicy:
        """Build the policy from the app's config keys (URL_* and MAX_UPLOAD_BYTES)."""
        default = cls()
        return cls(
            allowed_hosts=tuple(
                _normalise_allowed(h) for h in split_list(config.get("URL_ALLOWED_HOSTS"))
            ),
            allow_private=bool(config.get("URL_ALLOW_PRIVATE_NETWORKS", default.allow_private)),
            connect_timeout=float(config.get("URL_CONNECT_TIMEOUT", default.connect_timeout)),
            read_timeout=float(config.get("URL_READ_TIMEOUT", default.read_timeout)),
            deadline=float(config.get("URL_DEADLINE", default.deadline)),
            max_redirects=int(config.get("URL_MAX_REDIRECTS", default.max_redirects)),
            max_bytes=int(config.get("MAX_UPLOAD_BYTES", default.max_bytes)),
        )


@dataclass(frozen=True)
class Target:
    """One hop's checked URL: the canonical URL requests will see, and its host and port."""

    url: str
    host: str  # lowercase ASCII name, or an IP literal without brackets
    port: int


def _error(code: str, message: str) -> FaceappError:
    return FaceappError(code, message, field=FIELD)


def _invalid(message: str) -> FaceappError:
    return _error("url.invalid", message)


def normalise_host(host: str) -> str:
    """Return the host in the form it is compared and resolved in (raises ValueError if bad)."""
    if host.startswith("[") and host.endswith("]"):
        return ipaddress.IPv6Address(host[1:-1]).compressed  # no zone ids: '%' never gets here
    name = host.lower()
    name = name[:-1] if name.endswith(".") else name
    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        pass
    ascii_name = name.encode("idna").decode("ascii")  # UnicodeError is a ValueError
    if len(ascii_name) > 253 or not all(_LABEL.match(label) for label in ascii_name.split(".")):
        raise ValueError("not a host name")
    return ascii_name


def _normalise_allowed(entry: str) -> str:
    host = entry.strip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 address in the config
    try:
        return normalise_host(host)
    except ValueError:
        return entry.strip().lower().rstrip(".")  # never matches a valid host; harmless


def parse_target(url: str) -> Target:
    """Check a URL's form (http/https, no credentials, a sane host and port); raise url.invalid."""
    if not isinstance(url, str) or not url or len(url) > _MAX_URL_CHARS:
        raise _invalid("image_url must be an http or https URL of at most 2048 characters.")
    # urlsplit silently drops tabs and newlines and other parsers treat '\' as '/'; refuse both
    # so every parser agrees on what the host is.
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in url):
        raise _invalid("image_url must not contain spaces, control characters or backslashes.")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _invalid("image_url is not a well-formed URL.") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise _invalid("image_url must be an http or https URL.")
    if "@" in parts.netloc:
        raise _invalid("image_url must not contain a user name or password.")
    match = _NETLOC.match(parts.netloc)
    if match is None:
        raise _invalid("image_url must name a host (and optionally a numeric port).")
    try:
        host = normalise_host(match["host"])
    except ValueError as exc:
        raise _invalid("image_url does not name a valid host.") from exc
    port = int(match["port"]) if match["port"] else _DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise _invalid("image_url has a port outside 1-65535.")
    netloc = f"[{host}]" if ":" in host else host
    if match["port"]:
        netloc += f":{port}"
    canonical = f"{scheme}://{netloc}{parts.path or '/'}"
    if parts.query:
        canonical += f"?{parts.query}"
    return Target(url=canonical, host=host, port=port)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4, compatible), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _address_kind(address: IPAddress) -> str:
    """'public', 'private' (allowed by URL_ALLOW_PRIVATE_NETWORKS) or 'never' (not unicast)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return _address_kind(embedded)
        if address in _NAT64_LOCAL:
            return "private"
    if address.is_unspecified or address.is_multicast:
        return "never"
    if address.is_loopback:  # before is_reserved, which ::1 also is
        return "private"
    # is_global alone misses these: multicast counts as global, and so does much of ::/8.
    if address.is_reserved:
        return "never"
    if isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK:
        return "never"
    site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    if (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or site_local
    ):
        return "private"
    return "public"


def check_address(address: str | IPAddress, *, allow_private: bool = False) -> None:
    """Refuse (url.forbidden) an address image_url may not reach under this policy."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    kind = _address_kind(ip)
    if kind == "public" or (kind == "private" and allow_private):
        return
    raise _error(
        "url.forbidden",
        "image_url points to a private, local or reserved network address, which is not allowed.",
    )


def resolve_checked_address(host: str, port: int, policy: FetchPolicy) -> str:
    """Resolve `host` once, check every address it has, and return the one to connect to."""
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = _resolve(host, port)
    # One bad answer refuses the name: a resolver may hand out the private one next time.
    for address in addresses:
        check_address(address, allow_private=policy.allow_private)
    return str(addresses[0])


def _resolve(host: str, port: int) -> list[IPAddress]:
    unreachable = _error("url.unreachable", "The image_url host name could not be resolved.")
    try:
        # Called through the module so tests (and only the tests) can stand in for DNS.
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise unreachable from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        try:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        except ValueError as exc:
            raise unreachable from exc
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise unreachable
    return addresses


def check_host_allowed(host: str, policy: FetchPolicy) -> None:
    """Refuse (url.forbidden) a host that is not on a non-empty allow-list (whole names only)."""
    if policy.allowed_hosts and host not in {_normalise_allowed(h) for h in policy.allowed_hosts}:
        raise _error("url.forbidden", "image_url's host is not one of the allowed hosts.")


class PinnedAddressAdapter(DeadlineAdapter):
    """A requests transport that connects to an already-checked address, never resolving again.

    The URL keeps its host name, so the Host header, TLS SNI and certificate checks use the name;
    only the TCP connection goes to the pinned address.
    """

    def __init__(self) -> None:
        super().__init__(max_retries=0)
        self._pins: dict[tuple[str, int], str] = {}

    def pin(self, host: str, port: int, address: str) -> None:
        """Make connections for (host, port) go to `address`."""
        self._pins[(host, port)] = address

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Point urllib3's pool at the pinned address, keeping TLS checks on the host name."""
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        scheme, host = host_params["scheme"], host_params["host"]
        port = host_params["port"] or _DEFAULT_PORTS[scheme]
        address = self._pins.get((host, port))
        if address is None:  # fail closed: a host nobody checked is never connected to
            raise RuntimeError("no checked address is pinned for this host")
        host_params["host"] = address
        if scheme == "https":
            pool_kwargs["server_hostname"] = host
            pool_kwargs["assert_hostname"] = host
        return host_params, pool_kwargs

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Send with the URL's own host in the Host header (urllib3 would put the address)."""
        request.headers["Host"] = urlsplit(request.url).netloc
        return super().send(request, **kwargs)


@metrics.count_url_fetch
def fetch_url(url: str, policy: FetchPolicy) -> bytes:
    """Download `url` under the remote-fetch rules and return its body (raises url.* errors)."""
    with overall_deadline(policy.deadline) as deadline:
        try:
            return _fetch(url, policy, deadline.give_up_at)
        except FaceappError as exc:
            # Shut down at the deadline, a socket reads as a server that hung up.
            if deadline.expired and exc.code == "url.unreachable":
                raise _timeout() from exc
            raise


def _fetch(url: str, policy: FetchPolicy, give_up_at: float) -> bytes:
    adapter = PinnedAddressAdapter()
    with requests.Session() as session:
        session.trust_env = False  # no proxies or .netrc credentials from the environment
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        for _hop in range(policy.max_redirects + 1):
            target = parse_target(url)
            check_host_allowed(target.host, policy)
            address = resolve_checked_address(target.host, target.port, policy)
            adapter.pin(target.host, target.port, address)
            response = _get(session, target, policy, give_up_at)
            try:
                location = session.get_redirect_target(response)
                if location is None:
                    return _read_body(response, policy, give_up_at)
            finally:
                response.close()
            url = urljoin(target.url, location)
    raise _error(
        "url.too_many_redirects",
        f"image_url redirected more than {policy.max_redirects} times.",
    )


def _seconds_left(give_up_at: float) -> float:
    left = give_up_at - time.monotonic()
    if left <= 0:
        raise _timeout()
    return left


def _timeout() -> FaceappError:
    return _error("url.timeout", "Downloading image_url took too long.")


def _get(
    session: requests.Session, target: Target, policy: FetchPolicy, give_up_at: float
) -> requests.Response:
    left = _seconds_left(give_up_at)
    timeout = (min(policy.connect_timeout, left), min(policy.read_timeout, left))
    try:
        return session.get(
            target.url,
            headers=_HEADERS,
            timeout=timeout,
            stream=True,
            allow_redirects=False,
            verify=True,
        )
    except (requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout) as exc:
        raise _timeout() from exc
    except requests.exceptions.SSLError as exc:
        raise _error(
            "url.unreachable", "No verified secure connection could be made to image_url's host."
        ) from exc
    except (requests.exceptions.RequestException, OSError) as exc:
        raise _error("url.unreachable", "image_url's server could not be reached.") from exc


def _read_body(response: requests.Response, policy: FetchPolicy, give_up_at: float) -> bytes:
    if not 200 <= response.status_code < 300:
        raise _error(
            "url.bad_status",
            f"image_url's server answered with HTTP status {response.status_code}.",
        )
    too_large = _error(
        "url.too_large", f"The file at image_url is larger than {human_bytes(policy.max_bytes)}."
    )
    declared = response.headers.get("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > policy.max_bytes:
        raise too_large
    body = bytearray()
    while True:
        left = _seconds_left(give_up_at)
        _limit_next_read(response, min(policy.read_timeout, left))
        # At most one byte past the cap is read, and the cap counts decoded bytes (gzip).
        want = min(_CHUNK_BYTES, policy.max_bytes + 1 - len(body))
        try:
            chunk = response.raw.read1(want, decode_content=True)
        except (ReadTimeoutError, TimeoutError) as exc:
            raise _timeout() from exc
        except (Urllib3HTTPError, OSError) as exc:
            raise _error("url.unreachable", "The download of image_url broke off.") from exc
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > policy.max_bytes:
            raise too_large


def _limit_next_read(response: requests.Response, seconds: float) -> None:
    """Shorten the socket's read timeout to what is left of the deadline (drip-feeding servers)."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)
