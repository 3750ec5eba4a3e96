"""Keep the course offline.

* With ``DEPLOYKIT_BLOCK_NETWORK=1`` (set by the test suite, and inherited by every notebook kernel it
  starts), any Python socket connection to an address other than loopback raises at once, naming the
  address. Local servers (Netron, Jupyter) are unaffected.
* Always: OpenVINO's usage statistics are declined before openvino can be imported (see
  ``opt_out_of_openvino_telemetry``), and ONNX Runtime's telemetry store is switched off
  (``ORT_DISABLE_TELEMETRY=1``, unless the user set it) before onnxruntime can be imported.
"""
from __future__ import annotations

import ipaddress
import os
import platform
import socket
from pathlib import Path

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


# OpenVINO's usage statistics. `import openvino` imports its converter (openvino.tools.ovc), whose
# __init__ sends an "import" event to Google Analytics (openvino-telemetry, GA4 Measurement Protocol:
# https://www.google-analytics.com/mp/collect) and writes a random client id (~/intel/openvino_ga_cid)
# and a usage counter (~/intel/stats), unless the user opted out or CI=true (also TF_BUILD, JENKINS_URL)
# is set; no environment variable of its own turns it off. OpenVINO records the choice in one file,
# ~/intel/openvino_telemetry ("0" = declined; on Windows %LOCALAPPDATA%\Intel Corporation\), the file
# its own `opt_in_out --opt_out` writes. The course writes that "0" before openvino can be imported,
# if the file does not exist yet: a choice the user made earlier (either way) is left as it is.
def openvino_consent_file() -> Path | None:
    """Where OpenVINO's telemetry reads the user's choice (openvino_telemetry.utils.opt_in_checker)."""
    if platform.system() == "Windows":
        base, sub = os.path.expandvars("$LOCALAPPDATA"), "Intel Corporation"
    elif platform.system() in ("Linux", "Darwin"):
        base, sub = str(Path.home()), "intel"
    else:
        return None
    return Path(base, sub, "openvino_telemetry") if os.path.isdir(base) else None


def opt_out_of_openvino_telemetry() -> bool:
    """Record OpenVINO's telemetry opt-out unless a choice is recorded; return whether it is declined."""
    path = openvino_consent_file()
    if path is None:  # OpenVINO treats "no place for the file" as declined too
        return True
    try:
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            path.write_text("0")
        lines = path.read_text().splitlines()
        return not lines or lines[0].strip() != "1"  # OpenVINO sends only when the first line is "1"
    except OSError:  # a read-only home: OpenVINO cannot write its client id there either
        return False


OPENVINO_TELEMETRY_DECLINED = opt_out_of_openvino_telemetry()


# ONNX Runtime's telemetry. onnxruntime 1.31 (and onnxruntime-genai) write a device id and an event store
# at import and per session (~/.cache/Microsoft/DeveloperTools/.onnxruntime/deviceid, onnxruntime.db) on
# Linux too; ORT_DISABLE_TELEMETRY=1, read when onnxruntime loads, writes neither (tests/test_privacy.py).
# Set here, before any course code imports onnxruntime; `make lab` exports it too, for a notebook that
# imports onnxruntime before deploykit. A value the user set is kept.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
ORT_TELEMETRY_DISABLED = os.environ["ORT_DISABLE_TELEMETRY"] == "1"
