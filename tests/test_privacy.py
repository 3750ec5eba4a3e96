"""Nothing leaves the machine: OpenVINO's usage statistics are declined at ``import deploykit``, and the
course's MNN route never imports MNN's phoning-home ``MNN.tools``.

Each case runs in a fresh interpreter with a fresh HOME and no CI variables (OpenVINO's telemetry is
off under CI=true, which is why a CI run alone would prove nothing). Messages are caught where
openvino-telemetry queues them (``TelemetrySender.send``), so even the control case that shows what
OpenVINO does without the course sends nothing: it records the message instead.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CI_VARIABLES = ("CI", "TF_BUILD", "JENKINS_URL")

# Record every message OpenVINO would send instead of sending it, then import openvino.
_PROBE = """
import json, os, sys
from pathlib import Path
{before}
from openvino_telemetry.utils.sender import TelemetrySender
sent = []
TelemetrySender.send = lambda self, backend, message: sent.append(message)
import openvino
import openvino_telemetry
home = Path(os.environ["HOME"])
print(json.dumps({{
    "sent": sent,
    "consent": openvino_telemetry.Telemetry().consent,
    "files": sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()),
    "consent_file": (home / "intel" / "openvino_telemetry").read_text()
                    if (home / "intel" / "openvino_telemetry").exists() else None,
    "blocked": sys.modules["deploykit._offline"].ACTIVE if "deploykit._offline" in sys.modules else None,
}}))
"""


def _run(tmp_path: Path, before: str, *, block: bool, consent: str | None = None) -> dict:
    home = tmp_path / "home"
    home.mkdir()
    if consent is not None:
        (home / "intel").mkdir()
        (home / "intel" / "openvino_telemetry").write_text(consent)
    env = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES and k != "DEPLOYKIT_BLOCK_NETWORK"}
    env["HOME"] = str(home)
    if block:
        env["DEPLOYKIT_BLOCK_NETWORK"] = "1"
    done = subprocess.run([sys.executable, "-c", _PROBE.format(before=before)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_without_the_course_openvino_would_send_an_import_event(tmp_path):
    """The control: a plain `import openvino` (CI unset, no opt-out) queues an event and writes a client id."""
    result = _run(tmp_path, "", block=False)
    assert result["consent"] is True
    assert [event["name"] for message in result["sent"] for event in message["events"]] == ["import"]
    assert "intel/openvino_ga_cid" in result["files"]
    assert result["consent_file"] is None


@pytest.mark.parametrize("block", [False, True], ids=["network-open", "network-blocked"])
def test_import_deploykit_first_declines_openvino_telemetry(tmp_path, block):
    result = _run(tmp_path, "import deploykit", block=block)
    assert result["blocked"] is block
    assert result["sent"] == []
    assert result["consent"] is False
    assert result["consent_file"] == "0"
    # the one file written outside the course's folder; no client id, no usage counter
    assert result["files"] == ["intel/openvino_telemetry"]


def test_an_earlier_choice_is_left_as_it_is(tmp_path):
    result = _run(tmp_path, "import deploykit", block=True, consent="1")
    assert result["consent_file"] == "1"  # the user opted in earlier: deploykit does not overwrite it


def test_the_opt_out_reports_what_openvino_will_read(tmp_path, monkeypatch):
    from deploykit import _offline

    monkeypatch.setenv("HOME", str(tmp_path))
    path = _offline.openvino_consent_file()
    assert path == tmp_path / "intel" / "openvino_telemetry"
    assert _offline.opt_out_of_openvino_telemetry() is True and path.read_text() == "0"
    path.write_text("1\n")
    assert _offline.opt_out_of_openvino_telemetry() is False and path.read_text() == "1\n"
    path.write_text("")  # OpenVINO reads an empty file as declined
    assert _offline.opt_out_of_openvino_telemetry() is True
    monkeypatch.setenv("HOME", str(tmp_path / "missing"))
    assert _offline.openvino_consent_file() is None  # OpenVINO declines too when it has nowhere to write


def test_the_course_mnn_route_never_imports_mnn_tools(tmp_path):
    """`import MNN.tools` contacts Alibaba's server at import (MNN/tools/utils/log.py: MNNLogger()); the
    course imports MNN and the converter extension `_tools` only (lecture 12)."""
    code = ("import deploykit as dk, sys\n"
            "with dk.native_stdout_silenced():\n"
            "    import MNN, MNN.expr, MNN.nn, _tools\n"
            "print(sorted(m for m in sys.modules if m.startswith('MNN.tools') or m.startswith('aliyun')))\n")
    env = {**os.environ, "HOME": str(tmp_path), "DEPLOYKIT_BLOCK_NETWORK": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_mnn_tools_still_phones_home_at_import():
    """What lecture 12 says about MNN.tools, checked in the installed source (read as text, not imported)."""
    import importlib.util

    folder = Path(importlib.util.find_spec("MNN").submodule_search_locations[0]) / "tools"
    assert "mnnconvert" in (folder / "__init__.py").read_text()
    log = (folder / "utils" / "log.py").read_text()
    assert "mnn_logger = MNNLogger()" in log and "urlopen" in log  # _activate() runs in __init__


_ORT_SESSION = ("import numpy as np, onnxruntime as ort\n"
                "from onnx import TensorProto, helper\n"
                "graph = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g',\n"
                "    [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])],\n"
                "    [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])])\n"
                "model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid('', 18)])\n"
                "ort.InferenceSession(model.SerializeToString()).run(None, {'x': np.ones(1, np.float32)})\n")


def _ort_files(tmp_path, code):
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "CI")}
    env.update(HOME=str(tmp_path), DEPLOYKIT_BLOCK_NETWORK="1")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())


def test_without_the_course_onnxruntime_writes_its_telemetry_store(tmp_path):
    """The control: onnxruntime alone writes a device id and an event database under ~/.cache."""
    files = _ort_files(tmp_path, _ORT_SESSION)
    assert any(f.endswith("onnxruntime.db") for f in files) and any(f.endswith("deviceid") for f in files), files


def test_import_deploykit_first_keeps_onnxruntime_telemetry_off(tmp_path):
    files = _ort_files(tmp_path, "import deploykit\n" + _ORT_SESSION)
    assert not any(".onnxruntime" in f for f in files), files


def test_make_lab_starts_jupyter_with_onnxruntime_telemetry_off():
    makefile = (REPO / "Makefile").read_text()
    lab_recipe = makefile.split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert "ORT_DISABLE_TELEMETRY=1" in lab_recipe
