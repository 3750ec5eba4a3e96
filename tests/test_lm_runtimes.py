"""deploykit.lm_runtimes: cache keying, build_once, input validation, the runners' shared protocol."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

import deploykit as dk
from deploykit import language_model as lm
from deploykit import lm_runtimes as lr

TAG = lm.weights_sha256()[:12]


def test_importing_the_module_opts_out_of_onnxruntime_telemetry():
    # A fresh interpreter without the variable: importing lm_runtimes (deploykit first) sets it before onnxruntime is imported.
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    code = "import os, sys; import deploykit.lm_runtimes; print(os.environ.get('ORT_DISABLE_TELEMETRY'), 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out == ["1", "False"]


def test_a_users_own_telemetry_choice_is_kept():
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "0"}
    code = "import os, deploykit.lm_runtimes; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.strip() == "0"


def test_lm_artifact_is_keyed_by_the_weights_hash_with_lecture_13s_names():
    path = lr.lm_artifact("decode", ".onnx")
    assert path == dk.artifact_path(f"lm/decode_{TAG}.onnx")
    assert lr.lm_artifact("genai_int4").name == f"genai_int4_{TAG}"
    other = lr.lm_artifact("decode", ".onnx", tag="0123456789ab")
    assert other.name == "decode_0123456789ab.onnx" and other != path


@pytest.mark.parametrize("tag", ["0E60855C6299", "0e60855c629", "0e60855c6299a", "not-a-hash!!", 123])
def test_lm_artifact_refuses_a_tag_that_is_not_12_hex_digits(tag):
    with pytest.raises(ValueError, match="12 lowercase hex"):
        lr.lm_artifact("decode", ".onnx", tag=tag)


@pytest.mark.parametrize("name,suffix", [("../escape", ""), ("", ""), ("a/b", ""), ("ok", "pte"), ("ok", "./x")])
def test_lm_artifact_refuses_names_and_suffixes_that_could_escape(name, suffix):
    with pytest.raises(ValueError, match="lm_artifact expected"):
        lr.lm_artifact(name, suffix)


def test_build_once_builds_then_reuses_and_keeps_the_build_time(tmp_path):
    calls = []

    def build(partial):
        calls.append(partial)
        assert partial.name == "model.pte.partial"
        partial.write_bytes(b"x" * 10)

    first = lr.build_once(tmp_path / "model.pte", build)
    second = lr.build_once(tmp_path / "model.pte", build)
    assert len(calls) == 1 and not first.cached and second.cached
    assert second.seconds == pytest.approx(first.seconds, abs=1e-3)
    assert json.loads((tmp_path / "model.pte.build.json").read_text())["seconds"] >= 0
    assert (tmp_path / "model.pte").read_bytes() == b"x" * 10 and not (tmp_path / "model.pte.partial").exists()
    assert "reused" in str(second) and "built now" in str(first)


def test_build_once_builds_folders_and_clears_a_stale_partial(tmp_path):
    stale = tmp_path / "folder.partial"
    stale.mkdir()
    (stale / "half_written").write_text("from an interrupted run")

    def build(partial):
        partial.mkdir()
        (partial / "model.onnx").write_bytes(b"123")

    result = lr.build_once(tmp_path / "folder", build)
    assert sorted(p.name for p in result.path.iterdir()) == ["model.onnx"]
    assert lr.size_bytes(result.path) == 3


def test_build_once_without_a_record_reports_nan_seconds(tmp_path):
    (tmp_path / "old.onnx").write_bytes(b"1")
    result = lr.build_once(tmp_path / "old.onnx", lambda p: pytest.fail("must not rebuild"))
    assert result.cached and math.isnan(result.seconds)


def test_build_once_rejects_a_build_that_writes_nothing_and_a_non_callable(tmp_path):
    with pytest.raises(FileNotFoundError, match="wrote nothing"):
        lr.build_once(tmp_path / "x.pte", lambda partial: None)
    assert not (tmp_path / "x.pte").exists()
    with pytest.raises(TypeError, match="function taking the output path"):
        lr.build_once(tmp_path / "x.pte", "not callable")


def test_build_once_never_keeps_a_failed_or_empty_folder(tmp_path):
    def broken(partial):
        partial.mkdir()
        (partial / "model.tflite").write_bytes(b"half")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        lr.build_once(tmp_path / "litert", broken)
    assert not (tmp_path / "litert").exists()
    with pytest.raises(FileNotFoundError, match="wrote nothing"):
        lr.build_once(tmp_path / "litert", lambda partial: partial.mkdir())
    assert not (tmp_path / "litert").exists()
    result = lr.build_once(tmp_path / "litert", lambda partial: (partial.mkdir(), (partial / "m").write_bytes(b"1")))
    assert not result.cached and (result.path / "m").is_file()  # the stale partials did not stop a good build


def test_build_once_quiet_silences_the_converters_output(tmp_path, capfd):
    import warnings

    def noisy(partial):
        print("progress 10%")
        print("native-ish line", file=sys.stderr)
        warnings.warn("a converter's deprecation notice")
        os.write(2, b"a C++ log line\n")
        partial.write_bytes(b"x")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lr.build_once(tmp_path / "quiet.tflite", noisy, quiet=True)
    out, err = capfd.readouterr()
    assert (out, err, caught) == ("", "", [])
    lr.build_once(tmp_path / "loud.tflite", noisy)  # the default keeps the output: a learner sees a converter's errors
    out, err = capfd.readouterr()
    assert "progress 10%" in out and "a C++ log line" in err


def test_start_build_runs_the_command_in_the_background_then_reuses_it(tmp_path):
    write = "import sys, time; time.sleep(0.3); open(sys.argv[1], 'w').write('program')"
    pending = lr.start_build(tmp_path / "model.pte", [sys.executable, "-c", write, "{partial}"])
    assert not pending.done() and not (tmp_path / "model.pte").exists()  # running beside this process
    first = pending.wait()
    assert not first.cached and first.seconds >= 0.3 and (tmp_path / "model.pte").read_text() == "program"
    assert not (tmp_path / "model.pte.partial").exists()
    again = lr.start_build(tmp_path / "model.pte", [sys.executable, "-c", "raise SystemExit(1)", "{partial}"])
    assert again.done() and again.wait().cached and again.wait().seconds == pytest.approx(first.seconds, abs=1e-3)


def test_start_build_passes_extra_environment_and_makes_folders(tmp_path):
    write = "import os, sys; os.mkdir(sys.argv[1]); open(sys.argv[1] + '/v', 'w').write(os.environ['COURSE_X'])"
    built = lr.start_build(tmp_path / "folder", [sys.executable, "-c", write, "{partial}"], env={"COURSE_X": "7"}).wait()
    assert (built.path / "v").read_text() == "7"


def test_start_build_explains_a_failing_command_and_keeps_nothing(tmp_path):
    fail = "import sys; print('converting...'); sys.exit('the converter said: unsupported operator')"
    with pytest.raises(RuntimeError, match="(?s)exit 1.*converting.*unsupported operator"):
        lr.start_build(tmp_path / "x.pte", [sys.executable, "-c", fail, "{partial}"]).wait()
    assert not (tmp_path / "x.pte").exists()
    with pytest.raises(FileNotFoundError, match="wrote nothing"):
        lr.start_build(tmp_path / "x.pte", [sys.executable, "-c", "pass", "{partial}"]).wait()
    assert not (tmp_path / "x.pte").exists()


@pytest.mark.parametrize("command, error", [("python -m builder", TypeError), ([], TypeError),
                                            (["python", "-m", "builder"], ValueError),
                                            (["cp", "{partial}", "{partial}"], ValueError)])
def test_start_build_needs_a_list_with_one_partial_placeholder(tmp_path, command, error):
    with pytest.raises(error):
        lr.start_build(tmp_path / "x.pte", command)


def test_lm_litert_command_validates_before_converting(tmp_path):
    (tmp_path / "taken").mkdir()
    for argv, message in [([str(tmp_path / "taken")], "exists already"),
                          ([str(tmp_path / "missing" / "out")], "does not exist"),
                          ([str(tmp_path / "out"), "--int8-from", str(tmp_path / "none.tflite")], "convert the float32 model first"),
                          ([str(tmp_path / "out"), "--prefill", "300"], "cannot exceed"),
                          ([str(tmp_path / "out"), "--cache", "-1"], "positive")]:
        done = subprocess.run([sys.executable, "-m", "deploykit.lm_litert", *argv], capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr, (argv, done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_lm_executorch_command_validates_before_importing_executorch(tmp_path):
    from deploykit import lm_executorch

    for argv, message in [([str(tmp_path / "missing" / "x.pte")], "does not exist"),
                          ([str(tmp_path / "x.pte"), "--quantize", "int3"], "invalid choice"),
                          ([str(tmp_path / "x.pte"), "--max-cache", "0"], "positive"),
                          ([str(tmp_path / "x.pte"), "--max-prompt", "200"], "cannot exceed")]:
        done = subprocess.run([sys.executable, "-m", "deploykit.lm_executorch", *argv], capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr, (argv, done.stderr)
    assert not list(tmp_path.iterdir())
    assert lm_executorch.QUANTIZATIONS == (None, "8da4w")


def test_size_bytes_skips_build_records_and_names_a_missing_path(tmp_path):
    (tmp_path / "a").write_bytes(b"12345")
    (tmp_path / "a.build.json").write_text('{"seconds": 1}')
    assert lr.size_bytes(tmp_path) == 5
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lr.size_bytes(tmp_path / "missing")


@pytest.mark.parametrize("spec,message", [
    ("ort", "a dict with a 'kind'"),
    ({"kind": "llama.cpp"}, "unknown kind 'llama.cpp'"),
    ({"kind": "ort", "prefill": "p.onnx"}, "needs decode"),
    ({"kind": "genai"}, "needs model_dir"),
    ({"kind": "executorch"}, "needs pte"),
    ({"kind": "litert"}, "needs model"),
])
def test_make_runner_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        lr.make_runner(spec)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_make_runner_rejects_bad_thread_counts(threads):
    with pytest.raises(ValueError, match="threads expected an int >= 1"):
        lr.make_runner({"kind": "torch"}, threads)


@pytest.mark.parametrize("spec,what", [
    ({"kind": "ort", "prefill": "/nonexistent/p.onnx", "decode": "/nonexistent/d.onnx"}, "prefill graph"),
    ({"kind": "genai", "model_dir": "/nonexistent/genai"}, "ONNX Runtime GenAI model folder"),
    ({"kind": "executorch", "pte": "/nonexistent/m.pte"}, r"ExecuTorch program \(.pte\)"),
    ({"kind": "litert", "model": "/nonexistent/model.tflite"}, r"LiteRT model \(.tflite\)"),
])
def test_a_missing_conversion_says_to_run_the_conversion_cell(spec, what):
    with pytest.raises(FileNotFoundError, match=f"{what} not found .*run the notebook's conversion cell"):
        lr.make_runner(spec)


class Counting:
    """A runner that counts: start returns 100, each step the next integer (0 after 102: end of text)."""

    def start(self, prompt_ids):
        lr._check_prompt(prompt_ids)
        self.last = 100
        return self.last

    def step(self):
        self.last = 0 if self.last >= 102 else self.last + 1
        return self.last


def test_greedy_stops_at_n_new_or_at_end_of_text():
    assert lr.greedy(Counting(), [1, 2], 2) == [100, 101]
    assert lr.greedy(Counting(), [1, 2], 10) == [100, 101, 102, 0]
    with pytest.raises(ValueError, match="n_new >= 1"):
        lr.greedy(Counting(), [1], 0)
    with pytest.raises(ValueError, match="non-empty list of prompt token ids"):
        lr.greedy(Counting(), [], 3)


def test_measure_validates_before_running_anything():
    for kwargs, message in [({"threads": ()}, "non-empty tuple"), ({"threads": 1}, "non-empty tuple"),
                            ({"decode_steps": 0}, "decode_steps >= 1"), ({"warmup": -1}, "warmup >= 0"),
                            ({"repeats": 0}, "repeats >= 1")]:
        with pytest.raises(ValueError, match=message):
            lr.measure({"kind": "torch"}, [1, 2], **kwargs)
    with pytest.raises(ValueError, match="non-empty list"):
        lr.measure({"kind": "torch"}, [])


def test_measure_in_subprocess_rejects_an_unknown_kind_and_reports_a_failing_child():
    with pytest.raises(ValueError, match="kind in"):
        lr.measure_in_subprocess({"kind": "tensorrt"}, [1])
    with pytest.raises(RuntimeError, match=r"(?s)measuring genai in a subprocess failed .*not found"):
        lr.measure_in_subprocess({"kind": "genai", "model_dir": "/nonexistent/genai"}, [1], threads=(1,))


def test_peak_rss_is_this_programs_own_not_inherited_from_a_big_parent():
    # The parent holds 300 MB; a child started from it must not report them (ru_maxrss would, across execve).
    ballast = bytearray(300 * 2**20)
    ballast[::4096] = b"x" * len(ballast[::4096])
    child = subprocess.run([sys.executable, "-c", "from deploykit import lm_runtimes as lr; print(lr.peak_rss_mb())"],
                           capture_output=True, text=True, check=True)
    assert lr.peak_rss_mb() > 300 and float(child.stdout) < 200
    del ballast


def test_torch_runner_matches_generate_and_measure_reports_every_field():
    model, tokenizer = lm.load_language_model()
    prompt = tokenizer("The for statement")["input_ids"]
    import torch

    with torch.inference_mode():
        expected = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                  max_new_tokens=8, do_sample=False)[0, len(prompt):].tolist()
    assert lr.greedy(lr.make_runner({"kind": "torch"}), prompt, 8) == expected
    result = lr.measure({"kind": "torch"}, prompt, threads=(1,), decode_steps=2, warmup=0, repeats=2)
    one = result["by_threads"]["1"]
    assert one["ttft_ms"]["n"] == 2 and one["step_ms"]["n"] == 4
    assert one["ttft_ms"]["p90"] >= one["ttft_ms"]["median"] > 0 and one["tokens_per_s"] > 0
    assert result["peak_rss_mb"] >= result["rss_before_mb"] > 0
    row = lr.row("PyTorch eager", "float32", result, weight_bytes=13_600_000, bandwidth_gbs=13.6)
    assert row.ceiling_tokens_per_s == pytest.approx(1000) and math.isnan(row.tokens_per_s_2)
    with pytest.raises(ValueError, match="positive"):
        lr.row("x", "y", result, weight_bytes=0, bandwidth_gbs=1)
    with pytest.raises(ValueError, match="at 1 thread"):
        lr.row("x", "y", {"by_threads": {"2": one}, "peak_rss_mb": 1}, weight_bytes=1, bandwidth_gbs=1)
