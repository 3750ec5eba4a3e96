"""Prove the course runs offline: with ``DEPLOYKIT_BLOCK_NETWORK=1`` (set by the test suite, and
inherited by every notebook kernel it starts), any Python socket connection to an address other
than loopback raises at once, naming the address. Local servers (Netron, Jupyter) are unaffected.
"""
from __future__ import annotations

import ipaddress
import os
import socket

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


class NetworkBlocked(ConnectionRefusedError):
    pass


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths and the like
        return True
    host = str(address[0])
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS


def _check(address) -> None:
    if not _is_local(address):
        raise NetworkBlocked(f"deploykit blocked a network connection to {address!r}: the course must run offline "
                             "(unset DEPLOYKIT_BLOCK_NETWORK to allow it)")


def _connect(self, address):
    _check(address)
    return _real_connect(self, address)


def _connect_ex(self, address):
    _check(address)
    return _real_connect_ex(self, address)


def install() -> bool:
    """Install the guard if ``DEPLOYKIT_BLOCK_NETWORK=1``; return whether it is active."""
    if os.environ.get("DEPLOYKIT_BLOCK_NETWORK") != "1":
        return False
    socket.socket.connect = _connect
    socket.socket.connect_ex = _connect_ex
    return True


ACTIVE = install()
