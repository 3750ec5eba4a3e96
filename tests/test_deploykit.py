"""Unit tests of the helper package, including the errors a learner meets on bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import deploykit as dk


def test_artifact_path_is_inside_artifacts_and_created(tmp_artifacts):
    path = dk.artifact_path("sub/model.onnx")
    assert path.parent.is_dir() and path.is_relative_to(tmp_artifacts)


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../escape.onnx", None])
def test_artifact_path_refuses_bad_names(tmp_artifacts, bad):
    with pytest.raises(ValueError, match="artifact_path expected"):
        dk.artifact_path(bad)


def test_seed_everything_repeats_numbers():
    dk.seed_everything(3)
    first = (np.random.rand(), torch.rand(1).item())
    dk.seed_everything(3)
    assert first == (np.random.rand(), torch.rand(1).item())
    with pytest.raises(ValueError, match="non-negative int"):
        dk.seed_everything(-1)


def test_digits_split_shapes_and_range():
    split = dk.load_digits_split()
    assert split.x_train.shape[1:] == (1, 8, 8) and split.x_train.dtype == np.float32
    assert len(split.x_train) + len(split.x_test) == 1797
    assert 0.0 <= split.x_test.min() and split.x_test.max() <= 1.0
    assert sorted(np.unique(split.y_test)) == list(range(10))
    with pytest.raises(ValueError, match="fraction"):
        dk.load_digits_split(test_size=2)


def test_digits_model_trains_deterministically_and_caches(tmp_artifacts):
    first = dk.train_digits_model()
    assert not first.from_cache and first.test_accuracy > 0.95 and len(first.losses) == 15
    second = dk.train_digits_model()
    assert second.from_cache and second.test_accuracy == first.test_accuracy
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown training option"):
        dk.train_digits_model(epoch=3)


def test_example_input_validates_batch():
    assert dk.digits_example_input(4).shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="positive int"):
        dk.digits_example_input(0)


def test_torchvision_model_without_weights_and_unknown_name():
    model = dk.torchvision_model("resnet18")
    assert not model.training and dk.count_parameters(model) == 11_689_512
    with pytest.raises(ValueError, match="unknown torchvision model 'resnet19'.*resnet18"):
        dk.torchvision_model("resnet19")


def test_sample_image_and_preprocessing():
    image = dk.load_sample_image()
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    batch = dk.preprocess_imagenet(image)
    assert batch.shape == (1, 3, 224, 224) and batch.dtype == np.float32
    assert abs(float(batch.mean())) < 2.0
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        dk.preprocess_imagenet(image[..., 0])
    with pytest.raises(ValueError, match="dtype uint8"):
        dk.preprocess_imagenet(image.astype(np.float32))


def test_benchmark_counts_warmup_and_repeats():
    calls = []
    result = dk.benchmark(lambda: calls.append(1), warmup=3, repeats=7, threads=1, batch=2, label="noop")
    assert len(calls) == 10 and result.repeats == 7 and result.warmup == 3
    assert 0 <= result.min_ms <= result.median_ms <= result.p90_ms
    assert "batch 2, 1 thread(s)" in str(result)
    unstated = str(dk.benchmark(lambda: None, warmup=0, repeats=1, label="open"))
    assert unstated.endswith("(1 runs after 0 warm-up)") and "?" not in unstated
    with pytest.raises(TypeError, match="callable"):
        dk.benchmark(42)
    with pytest.raises(ValueError, match="repeats"):
        dk.benchmark(lambda: None, repeats=0)


def test_percentile_interpolates():
    assert dk.percentile([1, 2, 3, 4, 5], 50) == 3
    assert dk.percentile([0, 10], 90) == pytest.approx(9)
    with pytest.raises(ValueError):
        dk.percentile([], 50)


def test_machine_info_names_cpu_and_threads():
    info = dk.machine_info()
    assert info["logical_cores"] >= 1 and info["cpu"] and info["torch_threads"] >= 1


def test_parity_report_numbers_and_errors():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], dtype=np.float32)
    cand = ref + np.array([[0, 0, 1e-6], [0, 5.0, 0]], dtype=np.float32)
    report = dk.parity_report(torch.from_numpy(ref), cand)
    assert report.max_abs_diff == pytest.approx(5.0) and report.top1_agreement == 0.5
    assert not report.allclose
    assert dk.parity_report(ref, ref).allclose
    with pytest.raises(ValueError, match=r"shape \(3,\) does not match reference shape \(2, 3\)"):
        dk.parity_report(ref, ref[0])
    with pytest.raises(ValueError, match="outputs\\[0\\]"):
        dk.parity_report(ref, [ref])
    with pytest.raises(ValueError, match="numeric"):
        dk.parity_report(ref.astype(str), ref)


@pytest.fixture(scope="module")
def digits_onnx_file(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # restores a DEPLOYKIT_ARTIFACTS the user had set
        patch.setenv("DEPLOYKIT_ARTIFACTS", str(tmp_path_factory.mktemp("artifacts")))
        yield dk.digits_onnx()


def test_digits_onnx_graph_and_drawing(digits_onnx_file):
    import matplotlib

    matplotlib.use("Agg")
    graph = dk.load_graph(digits_onnx_file)
    assert graph.inputs == ["input"] and graph.outputs == ["logits"]
    assert graph.op_counts()["Conv"] == 2 and graph.depth() == len(graph.nodes)  # a chain
    fig = dk.draw_graph(graph)
    labels = [t.get_text() for t in fig.axes[0].texts if t.get_text()]
    assert sorted(labels) == sorted(node.op for node in graph.nodes)


def test_load_graph_errors_name_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        dk.load_graph(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match=r"ending in \.onnx or \.tflite"):
        dk.load_graph(tmp_path / "model.pt")
    with pytest.raises(TypeError, match="deploykit Graph"):
        dk.draw_graph("model.onnx")


def test_show_netron_serves_the_model_and_draws_a_fallback(digits_onnx_file, monkeypatch):
    import urllib.request

    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)  # set when the suite runs on Binder/a hub
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    graph = dk.show_netron(digits_onnx_file)
    html = shown[0].data
    assert 'src="/proxy/' in html and "Open digits_cnn.onnx in Netron" in html
    assert shown[1].__class__.__name__ == "Figure" and len(graph.nodes) > 0
    port = dk.netron.serve(digits_onnx_file)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        assert response.status == 200 and b"netron" in response.read().lower()
    assert dk.netron.netron_url(digits_onnx_file, "direct") == f"http://127.0.0.1:{port}/"
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    assert dk.netron.netron_url(digits_onnx_file) == f"/user/ada/proxy/{port}/"
    with pytest.raises(ValueError, match="mode expected one of"):
        dk.show_netron(digits_onnx_file, mode="browser")
    with pytest.raises(ValueError, match="ending in"):
        dk.show_netron("model.pth")


def test_netron_page_is_served_without_its_build_date(digits_onnx_file):
    """Netron asks to "update to the newest version" forever once its build date is 180 days old;
    the course's pinned, offline Netron must keep drawing graphs after that."""
    import urllib.request
    from pathlib import Path

    import netron

    on_disk = (Path(netron.__file__).parent / "index.html").read_text()
    assert '<meta name="date"' in on_disk  # what the page would age against
    with urllib.request.urlopen(f"http://127.0.0.1:{dk.netron.serve(digits_onnx_file)}/", timeout=10) as response:
        served = response.read().decode()
    assert '<meta name="version"' in served and '<meta name="date"' not in served


def test_netron_is_served_without_telemetry_and_with_a_csp(digits_onnx_file):
    """Netron's own page asks ipinfo.io where the learner is and, once its cookie notice is accepted,
    sends Google Analytics hits (page and notebook URLs, file name); the course serves it without
    either, and with a Content-Security-Policy that lets it connect to its own origin only."""
    import re
    import urllib.error
    import urllib.request
    from pathlib import Path

    import netron

    package = Path(netron.__file__).parent
    tracking = re.compile("|".join(re.escape(host) for host in dk.netron.TRACKING_HOSTS))
    on_disk = {p.name for p in package.iterdir() if p.suffix in (".js", ".html") and tracking.search(p.read_text("utf-8"))}
    assert {"browser.js", "base.js"} <= on_disk  # the geo-IP lookup and the analytics beacon (netron 9.3.3)
    assert "await consent();" in (package / "browser.js").read_text("utf-8")  # what the course removes
    port = dk.netron.serve(digits_onnx_file)
    for name in sorted(on_disk | {"", "index.js", "data/missing.onnx"}):
        try:
            response = urllib.request.urlopen(f"http://127.0.0.1:{port}/{name}", timeout=10)
        except urllib.error.HTTPError as error:  # a 404 carries the policy too
            response = error
        with response:
            served, policy = response.read().decode("utf-8"), response.headers["Content-Security-Policy"]
        assert not tracking.search(served), f"{name or 'index.html'} still names a tracking host"
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy, policy
        assert not re.search(r"\*|https?:|wss?:", policy), policy  # no other host, no wildcard
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/browser.js", timeout=10) as response:
        browser_js = response.read().decode("utf-8")
    for call in ("consent()", "telemetry()"):  # no cookie notice, no analytics session
        assert f"await {call};" not in browser_js and f"{call}: removed by deploykit" in browser_js


def test_export_onnx_validates_name_and_example(tmp_artifacts):
    with pytest.raises(ValueError, match="ending in .onnx"):
        dk.export_onnx(dk.DigitsCNN(), torch.zeros(1, 1, 8, 8), "model.tflite")
    with pytest.raises(ValueError, match="example batch tensor"):
        dk.export_onnx(dk.DigitsCNN(), torch.zeros(8), "model.onnx")


def test_checks_print_pass_or_hint_never_raise(capsys):
    from deploykit.checks import check, require

    @check("answer is 42")
    def check_answer(value):
        require(value == 42, f"got {value}; count again")

    @check("learner code")
    def check_stub():
        raise NotImplementedError

    assert check_answer(42)
    assert not check_answer(41)
    assert not check_stub()
    out = capsys.readouterr().out
    assert "[PASS] answer is 42" in out and "[HINT] answer is 42: got 41; count again" in out
    assert "not written yet" in out


def test_native_stderr_silenced_restores_fd(capfd):
    import os

    with dk.native_stderr_silenced():
        os.write(2, b"this goes nowhere\n")
    os.write(2, b"this is seen again\n")
    assert capfd.readouterr().err == "this is seen again\n"


def test_unknown_attribute_is_a_clear_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dk.nope


def test_setup_check_reports_ok_for_this_environment():
    lines = dk.setup_check.check_environment()
    assert lines and not [line for line in lines if line.startswith("[FAIL]")], lines


def test_setup_check_python_versions():
    ok, line = dk.setup_check.check_python((3, 11))
    assert ok and line == "[OK]   Python 3.11"
    assert dk.setup_check.check_python((3, 12)) == (True, "[OK]   Python 3.12")
    ok, line = dk.setup_check.check_python((3, 13))
    assert ok and line.startswith("[WARN] Python 3.13: not verified (verified: 3.11, 3.12)")
    ok, line = dk.setup_check.check_python((3, 10))
    assert not ok and line.startswith("[FAIL] Python 3.10") and "3.11 or newer" in line
    assert dk.setup_check.check_python()[0]   # this interpreter is supported


def test_makefile_and_pyproject_agree_with_the_verified_pythons():
    root = dk.repo_root()
    minimum = ".".join(map(str, dk.setup_check.MINIMUM_PYTHON))
    assert f'requires-python = ">={minimum}"' in (root / "pyproject.toml").read_text()
    makefile = (root / "Makefile").read_text()
    for version in dk.setup_check.VERIFIED_PYTHONS:
        assert str(version) in makefile, f"the Makefile's install warning should name verified {version}"


def test_setup_check_fails_clearly_on_a_wrong_pin_or_missing_package():
    ok, line = dk.setup_check.check_package("numpy", "0.0.1")
    assert not ok and line.startswith("[FAIL] numpy") and "pinned to 0.0.1" in line
    ok, line = dk.setup_check.check_package("no-such-package-xyz", "1.0")
    assert not ok and "not installed" in line


def test_network_guard_blocks_remote_and_allows_loopback():
    import socket
    import threading

    from deploykit import _offline

    assert _offline.ACTIVE, "tests/conftest.py sets DEPLOYKIT_BLOCK_NETWORK=1 before deploykit is imported"
    with socket.socket() as sock, pytest.raises(_offline.NetworkBlocked, match="must run offline"):
        sock.connect(("93.184.216.34", 80))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    accepter = threading.Thread(target=lambda: server.accept()[0].close(), daemon=True)
    accepter.start()
    with socket.socket() as sock:
        sock.connect(server.getsockname())
    accepter.join(timeout=10)
    server.close()


def test_export_onnx_works_whatever_forward_calls_its_argument(tmp_artifacts):
    import onnxruntime as ort

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))  # forward(input)
    path = dk.export_onnx(model, torch.zeros(2, 1, 8, 8), "sequential.onnx")
    session = ort.InferenceSession(path)
    assert session.run(None, {"input": np.zeros((5, 1, 8, 8), np.float32)})[0].shape == (5, 3)


def test_submodules_are_attributes():
    for name in ("quantize", "litert", "pitfalls", "netron", "checks"):
        assert getattr(dk, name).__name__ == f"deploykit.{name}"


def test_strip_debug_info_removes_machine_paths_and_keeps_outputs(tmp_artifacts):
    import warnings

    import onnx
    import onnxruntime as ort

    model = dk.DigitsCNN().eval()
    x = torch.zeros(3, 1, 8, 8)
    path = dk.artifact_path("raw.onnx")
    torch.onnx.export(model, (x,), str(path), input_names=["input"], dynamo=True, external_data=False, verbose=False)
    assert any(n.metadata_props for n in onnx.load(str(path)).graph.node)
    before = ort.InferenceSession(path).run(None, {"input": x.numpy()})[0]
    assert dk.strip_debug_info(path) > 0
    assert not any(n.metadata_props for n in onnx.load(str(path)).graph.node)
    assert np.array_equal(before, ort.InferenceSession(path).run(None, {"input": x.numpy()})[0])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x)
    script_path = dk.artifact_path("traced.pt")
    traced.save(str(script_path))
    assert b".debug_pkl" in script_path.read_bytes()  # source maps with this machine's paths
    assert dk.strip_debug_info(script_path) > 0 and b".debug_pkl" not in script_path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(torch.jit.load(str(script_path))(x), traced(x))
    (tmp_artifacts / "m.tflite").write_bytes(b"x")
    with pytest.raises(ValueError, match=".onnx or .pt"):
        dk.strip_debug_info(tmp_artifacts / "m.tflite")
    with pytest.raises(FileNotFoundError, match="existing .onnx"):
        dk.strip_debug_info(tmp_artifacts / "missing.onnx")


def test_native_stderr_captured_keeps_what_native_code_wrote():
    import ctypes

    import deploykit as dk

    libc = ctypes.CDLL(None)
    with dk.native_stderr_captured() as log:
        libc.write(2, b"native line\n", 12)
    assert log.text == "native line\n"


def test_installed_size_is_one_unit_for_every_lecture():
    import deploykit as dk
    from importlib import metadata

    size = dk.installed_bytes("onnxruntime")
    recorded = sum(f.size or 0 for f in metadata.distribution("onnxruntime").files)
    assert size >= recorded > 10 * dk.installed.MB  # the RECORD's sizes, plus files it gave no size for
    assert dk.installed_mb("onnxruntime") == size / 1e6  # MB, not MiB (issue 32: 69 MB vs 61.4 "MB")
    assert dk.installed_mb("ONNXRuntime") == dk.installed_mb("onnxruntime")  # pip names are case-insensitive
    with pytest.raises(ValueError, match="no distribution 'not-a-package-xyz' is installed"):
        dk.installed_mb("not-a-package-xyz")


def test_file_sizes_are_decimal_mb_and_a_missing_file_is_named(tmp_path):
    import deploykit as dk

    model = tmp_path / "model.onnx"
    model.write_bytes(b"\0" * 3_000_000)
    assert dk.file_mb(model) == 3.0  # 10^6 bytes, not 2^20 (that would print 2.86)
    assert dk.file_mb(str(model)) == 3.0
    with pytest.raises(FileNotFoundError, match="no file at .*missing.onnx"):
        dk.file_mb(tmp_path / "missing.onnx")
    with pytest.raises(FileNotFoundError, match="no file at"):
        dk.file_mb(tmp_path)  # a folder is not a file
