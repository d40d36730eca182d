"""Where the server may post alerts: a guard against webhooks aimed inside the platform's own
network (server-side request forgery).

A project admin chooses a webhook's URL, and the server posts to it: without a guard, a URL
naming the cloud's metadata service (``169.254.169.254``) or an internal address would make
the server a messenger into places its users cannot reach. Denied networks come from
``alerts.webhook_denied_networks`` (by default the link-local ranges, where every cloud puts
its metadata service, and the unspecified addresses). Loopback and private ranges are allowed
by default, since a self-hosted platform's receivers usually live there; an operator who wants
them closed adds them to the list.

The check is made twice: when a webhook is created (an address literal, or a name that
resolves into a denied network, is refused with a clear error) and when each post connects.
The connect-time check resolves the host, refuses it if any of its addresses is denied, and
connects to the address it checked, so a name re-pointed after the check (DNS rebinding)
cannot slip through; TLS still verifies the certificate against the URL's host name. Posts go
direct, never through the environment's proxies, which the guard could not see past.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence

import httpcore
import httpx

from underlay.errors import InvalidInput

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DENIED = (
    "169.254.0.0/16",  # IPv4 link-local: the metadata services of AWS, GCP, Azure, OpenStack
    "fe80::/10",  # IPv6 link-local
    "fd00:ec2::254/128",  # AWS's IPv6 metadata address
    "100.100.100.200/32",  # Alibaba Cloud's metadata address
    "0.0.0.0/8",  # "this host" (reaches local services on Linux)
    "::/128",
)


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """Networks from CIDR strings; ``ValueError`` naming the first bad one."""
    out = []
    for text in texts:
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{text[:60]!r} is not a network in CIDR form") from None
    return tuple(out)


def denied_by(address: str, networks: Sequence[Network]) -> Network | None:
    """The denied network holding ``address`` (IPv4-mapped IPv6 seen as IPv4), or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for network in networks:
        if ip.version == network.version and ip in network:
            return network
    return None


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _refusal(host: str, addresses: list[str], networks: Sequence[Network]) -> str | None:
    for address in addresses:
        network = denied_by(address, networks)
        if network is not None:
            shown = host if host == address else f"{host} ({address})"
            return (
                f"webhook host {shown} is in denied network {network} "
                "(alerts.webhook_denied_networks)"
            )
    return None


def check_host(host: str, port: int, networks: Sequence[Network]) -> None:
    """``InvalidInput`` when ``host`` is, or resolves to, an address in a denied network. A
    name that does not resolve yet passes: its posts are checked when they connect."""
    try:
        addresses = _resolve(host, port)
    except (OSError, UnicodeError):
        return
    refusal = _refusal(host, addresses, networks)
    if refusal is not None:
        raise InvalidInput(refusal)


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, refusing hosts with an address in a denied network and
    connecting to the very address it checked."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self.networks = tuple(networks)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = _resolve(host, port)
        except (OSError, UnicodeError) as error:
            raise httpcore.ConnectError(f"cannot resolve webhook host {host}: {error}") from None
        refusal = _refusal(host, addresses, self.networks)
        if refusal is not None:
            raise httpcore.ConnectError(refusal)
        failure: httpcore.ConnectError | None = None
        for address in addresses:  # every one checked; tried in order, as the resolver gave
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as error:
                failure = error
        raise failure or httpcore.ConnectError(f"webhook host {host} has no address")


def guarded_client(networks: Sequence[Network], timeout_s: float) -> httpx.Client:
    """An httpx client whose every connection passes the guard; no redirects, no proxies."""
    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool = httpcore.ConnectionPool(  # httpx's own pool, with the guarded backend
        ssl_context=transport._pool._ssl_context,
        network_backend=GuardedBackend(networks),
    )
    return httpx.Client(
        transport=transport, timeout=timeout_s, follow_redirects=False, trust_env=False
    )
