"""Who may use the demo: the Host and Origin a request names, and the page's token on every POST.

A web page the user visits elsewhere can send requests to the demo's port (cross-site request
forgery), and a name it controls can be re-pointed at 127.0.0.1 to read the answers (DNS
rebinding). So the server answers only requests whose ``Host`` names it (its address and port, and
``localhost`` / ``127.0.0.1`` / ``[::1]`` when it listens on loopback), whose ``Origin``, when sent,
is that same origin, and whose POSTs carry the random token embedded in the page it served.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
TOKEN_HEADER = "X-Piti-Token"


def new_token() -> str:
    """A random token for one server process (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


def token_matches(given: str | None, token: str) -> bool:
    """Whether the request's token is ``token`` (constant-time comparison)."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _machine_names() -> set[str]:
    """This machine's host name and fully qualified name (lower case), when it has them."""
    names = {socket.gethostname(), socket.getfqdn()}
    return {n.lower() for n in names if n}


class HostCheck:
    """Which ``Host`` header values name a server bound to ``address`` (numeric) and ``port``.

    Loopback: the address and the loopback aliases. A wildcard (0.0.0.0, ::): any IP address (an
    address cannot be re-pointed by DNS), the loopback aliases and this machine's names. Any other
    address: that address only. The port must always be the server's (it may be left out only on 80).
    """

    def __init__(self, address: str, port: int):
        ip = ipaddress.ip_address(address.split("%")[0])
        self.port = port
        self.any_ip = ip.is_unspecified
        self.names = {_bracket(str(ip))}
        if ip.is_loopback or ip.is_unspecified:
            self.names |= set(LOOPBACK_NAMES)
        if ip.is_unspecified:
            self.names |= _machine_names()

    def __call__(self, host: str | None) -> bool:
        if not host:
            return False
        name, port = _split_host(host.strip().lower())
        if port != self.port and not (port is None and self.port == 80):
            return False
        return name in self.names or (self.any_ip and _is_ip(name))


def _split_host(host: str) -> tuple[str, int | None]:
    """``"name:port"`` / ``"[v6]:port"`` / ``"name"`` -> (name, port or None); port -1 when malformed."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name += "]"
        if not rest:
            return name, None
        port = rest[1:] if rest.startswith(":") else "x"
    else:
        name, sep, port = host.rpartition(":")
        if not sep:
            return host, None
    return name, int(port) if port.isdigit() and len(port) <= 5 else -1


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def origin_matches(origin: str | None, host: str | None) -> bool:
    """Whether ``Origin`` (when sent) is the origin the request's ``Host`` names: ``http://<host>``."""
    if origin is None:
        return True
    return bool(host) and origin.strip().lower() == f"http://{host.strip().lower()}"
