"""Outbound HTTP to addresses a user chose (webhooks): where a URL may go, and one POST that goes only there.

Two steps, so that what was checked is what is used:

1. ``check_callback_url(url, settings) -> Target`` parses the URL (http/https, a host, no
   ``user:pass@``, a valid port), resolves the host once with ``socket.getaddrinfo`` (every
   address) and refuses it when ANY address is not a public unicast internet address: loopback,
   RFC 1918, link-local (169.254/16, fe80::/10, cloud metadata), CGNAT 100.64/10, multicast,
   unspecified, broadcast, reserved, documentation, benchmarking, ULA fc00::/7, site-local, and the
   IPv4 address inside IPv4-mapped (``::ffff:127.0.0.1``), NAT64 and 6to4 addresses (Teredo is
   refused). Numeric spellings such as ``2130706433`` or ``0x7f.1`` resolve to 127.0.0.1
   (inet_aton rules) and are refused as loopback; a public one is refused too, as ambiguous.
   ``api.webhook_allow_private`` lets loopback/private/link-local/CGNAT/ULA addresses pass (not
   the cloud metadata addresses, not multicast/unspecified/broadcast); ``api.webhook_allow_hosts``
   (host names, IPs or CIDRs) lets a named receiver pass whatever it resolves to (except
   unspecified, multicast and broadcast addresses, which are never a receiver).
2. ``post(target, body, headers, deadline_s, max_response_bytes)`` connects to the checked
   address itself (no second lookup, so a DNS answer that changes after the check - DNS
   rebinding - is never used), sends the URL's host name in ``Host``, speaks TLS with SNI and
   certificate verification against that name for https, follows no redirect, and keeps ONE
   deadline for connect + TLS handshake + send + every read: each socket operation gets the time
   left as its timeout, so a receiver that trickles a byte every second cannot hold it longer.

Standard library only: ``socket`` + ``ssl`` and a minimal HTTP/1.1 client (request writer and
status/header parser). ``http.client`` was not used because it resolves names itself and reads
through a buffered file whose per-read timeout cannot be recomputed between reads.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

from pipeline.errors import InputRejected, TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Largest status line + headers of a reply that is read.
MAX_HEAD_BYTES = 16 * 1024
_RECV = 4096

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
_CGNAT = _V4("100.64.0.0/10")
_THIS_NETWORK = _V4("0.0.0.0/8")
_DOCUMENTATION = (_V4("192.0.2.0/24"), _V4("198.51.100.0/24"), _V4("203.0.113.0/24"), _V6("2001:db8::/32"),
                  _V6("3fff::/20"))
_BENCHMARK = (_V4("198.18.0.0/15"), _V6("2001:2::/48"))
_PROTOCOL_ASSIGNMENTS = (_V4("192.0.0.0/24"), _V4("192.88.99.0/24"))  # IETF protocol space, 6to4 relay anycast
_NAT64 = _V6("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits are an IPv4 address
_NAT64_LOCAL = _V6("64:ff9b:1::/48")
_DISCARD = _V6("100::/64")
_ULA = _V6("fc00::/7")
_SITE_LOCAL = _V6("fec0::/10")
#: Cloud instance metadata services: credentials live there; never reachable, even with allow_private.
_METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254",
                                               "100.100.100.200")}
#: Kinds of address that ``api.webhook_allow_private`` lets through.
PRIVATE_KINDS = frozenset({"loopback", "private", "link-local", "CGNAT", "unique-local", "site-local"})
#: Kinds that are never a receiver, whatever the settings say.
NEVER_KINDS = frozenset({"unspecified", "multicast", "broadcast"})
_DESCRIBE = {
    "loopback": "a loopback address", "private": "a private (RFC 1918) address",
    "link-local": "a link-local address", "metadata": "a cloud metadata address",
    "CGNAT": "a carrier-grade NAT (100.64.0.0/10) address", "unique-local": "a unique-local (fc00::/7) address",
    "site-local": "a site-local (fec0::/10) address", "unspecified": "the unspecified address",
    "multicast": "a multicast address", "broadcast": "a broadcast address",
    "reserved": "a reserved address", "documentation": "a documentation address",
    "benchmarking": "a benchmarking address", "protocol": "an IETF protocol address",
    "teredo": "a Teredo tunnel address", "nat64-local": "a local-use NAT64 address",
    "discard": "a discard-only address", "not-global": "not a global internet address",
}
_HOST_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class Target:
    """A checked URL: connect to ``addresses`` (in order), say ``host`` in Host and SNI."""

    url: str
    scheme: str
    host: str  # lower case, IDNA (ASCII), no brackets around an IPv6 literal
    port: int
    path: str  # path + query, at least "/"
    addresses: tuple[str, ...]  # every address the host resolved to, each one checked

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"


@dataclass
class Reply:
    """What one exchange got: the status (None when no complete status line came), an error
    sentence when the delivery failed, and at most ``max_response_bytes`` of the body."""

    status: int | None = None
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None
    address: str | None = None  # the address connected to
    bytes_read: int = 0  # everything taken from the socket: head + body
    elapsed_s: float = 0.0


# ------------------------------------------------------------------------------------------------
# Where a URL may go


def address_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast internet address (a kind from ``_DESCRIBE``), or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        embedded = _embedded_v4(ip)
        if embedded is not None:  # the packet ends at the IPv4 address inside
            return address_kind(embedded)
        if ip.teredo is not None:
            return "teredo"
        if ip in _NAT64_LOCAL:
            return "nat64-local"
        if ip in _DISCARD:
            return "discard"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"
    if ip in _METADATA:
        return "metadata"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in _CGNAT:
            return "CGNAT"
        if ip in _THIS_NETWORK:
            return "reserved"
    else:
        if ip in _ULA:
            return "unique-local"
        if ip in _SITE_LOCAL:
            return "site-local"
    if any(ip in net for net in _DOCUMENTATION if net.version == ip.version):
        return "documentation"
    if any(ip in net for net in _BENCHMARK if net.version == ip.version):
        return "benchmarking"
    if any(ip in net for net in _PROTOCOL_ASSIGNMENTS if net.version == ip.version):
        return "protocol"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not-global"
    return None


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped (::ffff:a.b.c.d), 6to4 (2002::/16) or NAT64 (64:ff9b::/96)
    address leads to."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    ip = _plain(ip)
    return ip.ipv4_mapped or ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)


def _allow_list(entries: list[str]) -> tuple[set[str], list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    names, networks = set(), []
    for entry in entries:
        entry = entry.strip()
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    return names, networks


def _refuse(url_host: str, why: str) -> InputRejected:
    return InputRejected(f"callback_url refused: {why}", code="bad_callback_url", details={"host": url_host})


def check_callback_url(url: str, settings, *, resolve: Callable | None = None) -> Target:
    """Parse and resolve ``url``; raise ``InputRejected(code="bad_callback_url")`` saying why when
    it may not be called, ``TransientError`` when its name cannot be resolved right now."""
    api = settings.api
    if not isinstance(url, str) or not url:
        raise _refuse("", "it is empty")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise _refuse("", "it contains spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise _refuse("", f"it is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _refuse("", f"scheme {parts.scheme or '(none)'!r} is not http or https")
    if "@" in parts.netloc:
        raise _refuse("", "it carries credentials (user:password@); put a token in the path or use the signature")
    raw_host = parts.hostname
    if not raw_host:
        raise _refuse("", "it has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise _refuse(raw_host, "its port is not a number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise _refuse(raw_host, "its port is not a number from 1 to 65535")
    literal = _ip_literal(raw_host)
    if literal is not None:
        host = str(literal)
    else:
        if "%" in raw_host or ":" in raw_host or "[" in parts.netloc:
            raise _refuse(raw_host, f"host {raw_host!r} is not a valid IPv6 address")
        try:
            host = raw_host.rstrip(".").encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise _refuse(raw_host, f"host {raw_host!r} is not a valid host name") from None
        if not _HOST_NAME.match(host):
            raise _refuse(raw_host, f"host {raw_host!r} is not a valid host name")
    addresses = _resolve(host, port, resolve or socket.getaddrinfo)
    names, networks = _allow_list(api.webhook_allow_hosts)
    name_allowed = host in names
    for ip in addresses:
        kind = address_kind(ip)
        if kind is None:
            continue
        inside = _embedded_v4(ip)
        shown = f"{ip} (IPv4 {inside} inside)" if inside is not None else str(ip)
        said = shown if literal is not None else f"{host} resolves to {shown}, which"
        if kind in NEVER_KINDS:
            raise _refuse(host, f"{said} is {_DESCRIBE[kind]}: no receiver can be there")
        if name_allowed or any(ip.version == net.version and _plain(ip) in net for net in networks):
            continue
        if api.webhook_allow_private and kind in PRIVATE_KINDS:
            continue
        raise _refuse(host, f"{said} is {_DESCRIBE[kind]}; webhooks go only to public internet addresses "
                            "(an on-prem receiver can be allowed with api.webhook_allow_hosts)")
    if literal is None and _numeric_spelling(host) and not name_allowed:
        # '2130706433', '0x7f.1', '010.0.0.1': inet_aton reads these as addresses; say it plainly
        raise _refuse(host, f"host {host!r} is an ambiguous numeric address; write it as a dotted quad")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url=url, scheme=scheme, host=host, port=port, path=path,
                  addresses=tuple(str(_plain(ip)) if ip.version == 4 else str(ip) for ip in addresses))


def _ip_literal(host: str) -> IPAddress | None:
    """A canonical IP literal ('93.184.215.14', '::1'), not the numeric spellings inet_aton allows."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _numeric_spelling(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def _plain(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    return ip


def _resolve(host: str, port: int, getaddrinfo: Callable) -> list[IPAddress]:
    try:
        infos = getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            raise _refuse(host, f"host {host!r} does not resolve (DNS: {exc.strerror})") from None
        raise TransientError(f"host {host!r} of the callback_url cannot be resolved now (DNS: {exc.strerror})",
                             code="webhook_dns") from None
    except UnicodeError:
        raise _refuse(host, f"host {host!r} is not a valid host name") from None
    seen: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in seen:
            seen.append(ip)
    if not seen:
        raise _refuse(host, f"host {host!r} has no IPv4 or IPv6 address")
    return seen


# ------------------------------------------------------------------------------------------------
# One POST, to the checked address, within one deadline


class _Deadline(Exception):
    pass


def post(target: Target, body: bytes, headers: dict[str, str], deadline_s: float,
         max_response_bytes: int) -> tuple[int | None, str | None]:
    """POST ``body`` to ``target``. Returns (status code or None, error sentence or None); the
    error is None only for a 2xx reply. A 3xx is not followed ("redirect to ... not followed")."""
    reply = exchange(target, body, headers, deadline_s=deadline_s, max_response_bytes=max_response_bytes)
    return reply.status, reply.error


def exchange(target: Target, body: bytes, headers: dict[str, str], *, deadline_s: float, max_response_bytes: int,
             method: str = "POST", ssl_context: ssl.SSLContext | None = None) -> Reply:
    """One HTTP/1.1 request on a fresh connection to one of ``target.addresses``; never raises for
    anything the network or the receiver does (the Reply's ``error`` says what happened)."""
    started = time.monotonic()
    deadline = started + deadline_s

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Deadline
        return remaining

    request = _request_bytes(target, method, body, headers)
    reply = Reply()
    sock: socket.socket | None = None
    try:
        sock, reply.address, failures = None, None, []
        for n, address in enumerate(target.addresses):
            try:  # each remaining address gets an equal share of the time left to connect
                sock = _open_socket(address, target.port, left() / (len(target.addresses) - n))
                reply.address = address
                break
            except _Deadline:
                raise
            except OSError as exc:
                failures.append(f"{address}: {_os_error(exc)}")
        if sock is None:
            if time.monotonic() >= deadline:
                raise _Deadline
            reply.error = "could not connect (" + "; ".join(failures) + ")"
            return reply
        if target.scheme == "https":
            context = ssl_context or ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=target.host, do_handshake_on_connect=False)
            sock.settimeout(left())
            sock.do_handshake()  # CPython bounds the whole handshake by the timeout
        view = memoryview(request)
        while view:
            sock.settimeout(left())
            sent = sock.send(view[:65536])
            view = view[sent:]
        head, rest = _read_head(sock, left, reply)
        reply.status, reply.reason, reply.headers = _parse_head(head)
        reply.body = _read_body(sock, rest, reply.headers, left, max_response_bytes, reply)
    except _Deadline:
        reply.error = (f"no complete reply within {deadline_s:g} s" if reply.status is None else None)
    except (socket.timeout, TimeoutError):
        if reply.status is None:
            reply.error = f"no complete reply within {deadline_s:g} s"
    except ssl.SSLCertVerificationError as exc:
        reply.error = f"TLS certificate of {target.host} not accepted: {exc.verify_message or exc.reason}"
    except ssl.SSLError as exc:
        reply.error = f"TLS failed: {exc.reason or exc}"
    except _BadReply as exc:
        reply.status, reply.error = None, f"not an HTTP reply: {exc}"
    except OSError as exc:
        if reply.status is None:
            reply.error = f"connection failed: {_os_error(exc)}"
    finally:
        if sock is not None:
            sock.close()
        reply.elapsed_s = time.monotonic() - started
    if reply.status is not None and reply.error is None and not 200 <= reply.status < 300:
        if 300 <= reply.status < 400:
            location = _printable(reply.headers.get("location", "(no Location)"))
            reply.error = f"HTTP {reply.status}: redirect to {location} not followed"
        else:
            reply.error = f"HTTP {reply.status}"
    return reply


def _open_socket(address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to this exact address (no name lookup)."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    sockaddr = (address, port) if ip.version == 4 else (address, port, 0, 0)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _request_bytes(target: Target, method: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target.path} HTTP/1.1", f"Host: {target.host_header}", f"Content-Length: {len(body)}",
             "Connection: close"]
    given = {name.lower() for name in headers}
    if "user-agent" not in given:
        lines.append("User-Agent: alive-webhook/1")
    for name, value in headers.items():
        value = str(value)
        if not _TOKEN.match(name) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name!r} is not a valid HTTP header")
        if name.lower() in ("host", "content-length", "connection", "transfer-encoding"):
            continue  # set above, from the target and the body
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _BadReply(Exception):
    pass


def _read_head(sock: socket.socket, left: Callable[[], float], reply: Reply) -> tuple[bytes, bytes]:
    """Status line + headers (skipping 1xx interim replies), and whatever body bytes came with them."""
    buf = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head, buf = buf[:end], buf[end + 4:]
            if re.match(rb"HTTP/1\.[01] 1\d\d", head) and not head.startswith((b"HTTP/1.1 101", b"HTTP/1.0 101")):
                continue  # 100 Continue and friends: the real reply follows
            return head, buf
        if len(buf) > MAX_HEAD_BYTES:
            raise _BadReply(f"status line and headers longer than {MAX_HEAD_BYTES} bytes")
        sock.settimeout(left())
        chunk = sock.recv(_RECV)
        if not chunk:
            raise _BadReply("the connection closed before a complete status line and headers"
                            if buf else "the connection closed without a reply")
        reply.bytes_read += len(chunk)
        buf += chunk


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    text = head.decode("latin-1")
    status_line, *header_lines = text.split("\r\n")
    match = re.match(r"^HTTP/1\.[01] (\d{3})(?: (.*))?$", status_line)
    if not match:
        raise _BadReply(f"status line {_printable(status_line)!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(match.group(1)), match.group(2) or "", headers


def _read_body(sock: socket.socket, start: bytes, headers: dict[str, str], left: Callable[[], float],
               limit: int, reply: Reply) -> bytes:
    """At most ``limit`` bytes of the body (raw: a chunked body is not decoded); stops at the end of
    the body, at the limit, at the deadline or when the receiver closes."""
    want = limit
    length = headers.get("content-length", "")
    if length.isdigit():
        want = min(want, int(length))
    body = start[:want]
    try:
        while len(body) < want:
            sock.settimeout(left())
            chunk = sock.recv(min(65536, want - len(body)))
            if not chunk:
                break
            reply.bytes_read += len(chunk)
            body += chunk
    except (_Deadline, OSError):
        pass  # the status is in: a slow or broken body does not change the outcome
    return body


def _os_error(exc: OSError) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__


def _printable(text: str, limit: int = 200) -> str:
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."
