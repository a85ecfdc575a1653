"""What ``executor.address`` may be: one parser for the recipe's check (so ``validate`` refuses
a malformed address as ``run`` does) and for the driver's probes of the cluster, and the one
probe they make (a TCP connection: Ray retries an unreachable address for minutes)."""

from __future__ import annotations

import socket

ADDRESS_FORMS = "'auto', 'local', host:port (e.g. 10.0.0.5:6379) or ray://host:port"


def host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` (``ray://`` stripped; ``[::1]:6379`` for IPv6; no host: this machine) as
    a socket address, or None when it is not of that form."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def check_address(address: str) -> str:
    """A recipe's ``executor.address``, or ValueError naming the forms it may take."""
    if address not in ("auto", "local") and host_port(address) is None:
        raise ValueError(f"expected {ADDRESS_FORMS}, got {address!r}")
    return address


def unreachable(where: tuple[str, int], timeout_s: float) -> OSError | None:
    """Why ``where`` (a :func:`host_port` address) did not accept a connection within
    ``timeout_s``, or None where it did."""
    try:
        with socket.create_connection(where, timeout=timeout_s):
            return None
    except OSError as e:
        return e
