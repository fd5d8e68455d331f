"""The test suite's network guard: loopback, this machine's own addresses and Unix sockets only.

Python imports this file at start-up in every interpreter whose PYTHONPATH names this folder;
tests/conftest.py puts it there for every process the tests start, and installs the same guard
in the pytest process itself. Anything else (a TCP connection to another machine, a datagram sent
there, a DNS lookup of a public name) raises `NetworkBlocked`, an OSError like the one an unplugged
machine gives, and is appended to the file named by $RECOMMENDER_TEST_NETLOG: conftest.py fails
the test that was running when it finds a new line there, even when the code under test caught
the error. Standard library only: it runs before anything else is importable.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import sys
import traceback

LOG_ENV = "RECOMMENDER_TEST_NETLOG"
LOCAL_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
#: Cloud metadata servers, which Ray's dashboard asks which cloud it runs on whatever its settings
#: (ray._common.usage.usage_lib.get_cluster_config_to_report): blocked like any other address, but not
#: counted against the test running, since no code of ours asked.
UNCOUNTED = {"169.254.169.254", "metadata.google.internal"}
_INET = (socket.AF_INET, socket.AF_INET6)


class NetworkBlocked(OSError):
    """A test tried to reach another machine."""


class LookupBlocked(socket.gaierror):
    """A test tried to resolve a public name (a DNS query leaves the machine)."""


def _own_addresses() -> set[str]:
    """This machine's addresses: a connection to one of them never leaves it (Ray dials its node IP)."""
    own: set[str] = set()
    with contextlib.suppress(OSError):
        own.update(ORIGINAL_GETADDRINFO_HOST(socket.gethostname())[2])
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:  # connecting a datagram socket sends nothing: it only asks the kernel for a route
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                ORIGINAL_CONNECT(sock, (probe, 9))
                own.add(sock.getsockname()[0])
        except OSError:
            pass
    return own


def is_local(host: object) -> bool:
    """Whether `host` (a name or an address) is this machine."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host is None or str(host).lower() in LOCAL_NAMES:
        return True
    text = str(host).split("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text.lower() == socket.gethostname().lower()
    mapped = getattr(address, "ipv4_mapped", None)
    address = mapped or address
    if address.is_loopback or address.is_unspecified:
        return True
    global OWN
    if OWN is None:
        OWN = _own_addresses()
    return str(address) in OWN


def record(what: str) -> None:
    """Append one attempt, with the stack that made it, to the log conftest.py reads."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    stack = "".join(traceback.format_stack(limit=12)[:-2])
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"pid {os.getpid()} ({' '.join(sys.argv)[:200]}): {what}\n{stack}\n")
    except OSError:
        pass


def _check(sock: socket.socket, address: object, what: str) -> None:
    if sock.family in _INET and isinstance(address, tuple) and address and not is_local(address[0]):
        if str(address[0]) not in UNCOUNTED:
            record(f"{what} {address!r}")
        raise NetworkBlocked(errno.ENETUNREACH, f"the test suite allows no network: {what} {address!r}")


def _connect(self: socket.socket, address: object) -> None:
    if self.type != socket.SOCK_DGRAM:  # a datagram connect sends nothing; its sends are checked
        _check(self, address, "connect to")
    return ORIGINAL_CONNECT(self, address)


def _connect_ex(self: socket.socket, address: object) -> int:
    if self.type != socket.SOCK_DGRAM:
        _check(self, address, "connect to")
    return ORIGINAL_CONNECT_EX(self, address)


def _sendto(self: socket.socket, data: bytes, *args: object) -> int:
    _check(self, args[-1] if args else None, "datagram to")
    return ORIGINAL_SENDTO(self, data, *args)


def _getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
    if not is_local(host):
        try:
            ipaddress.ip_address(str(host.decode() if isinstance(host, bytes) else host).split("%")[0])
        except ValueError:  # a name: resolving it asks a DNS server; an address is checked on connect
            if str(host.decode() if isinstance(host, bytes) else host) not in UNCOUNTED:
                record(f"lookup of {host!r}")
            raise LookupBlocked(socket.EAI_NONAME, f"the test suite allows no network: lookup of {host!r}") from None
    return ORIGINAL_GETADDRINFO(host, *args, **kwargs)


def _gethostbyname(host: str) -> str:
    _getaddrinfo(host, None)
    return ORIGINAL_GETHOSTBYNAME(host)


ORIGINAL_CONNECT = socket.socket.connect
ORIGINAL_CONNECT_EX = socket.socket.connect_ex
ORIGINAL_SENDTO = socket.socket.sendto
ORIGINAL_GETADDRINFO = socket.getaddrinfo
ORIGINAL_GETHOSTBYNAME = socket.gethostbyname
ORIGINAL_GETADDRINFO_HOST = socket.gethostbyname_ex
OWN: set[str] | None = None


def install() -> None:
    """Patch the socket module of this interpreter (idempotent)."""
    if getattr(socket.socket.connect, "hermetic", False):
        return  # installed already (by sitecustomize, then again by conftest.py)
    for patch in (_connect, _connect_ex, _sendto, _getaddrinfo, _gethostbyname):
        patch.hermetic = True  # type: ignore[attr-defined]
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = _sendto  # type: ignore[method-assign]
    socket.getaddrinfo = _getaddrinfo
    socket.gethostbyname = _gethostbyname


if os.environ.get(LOG_ENV):
    install()
