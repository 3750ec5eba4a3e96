"""deploykit.lm_runtimes: cache keying, build_once, input validation, the runners' shared protocol."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    runner = lr.make_runner({"kind": "torch"})
    assert lr.greedy(runner, prompt, 8) == expected
    runner.reset()  # set-up and prefill apart give the same first token as start
    assert runner.prefill(prompt) == expected[0] and runner.step() == expected[1]
    result = lr.measure({"kind": "torch"}, prompt, threads=(1,), decode_steps=2, warmup=0, repeats=2)
    one = result["by_threads"]["1"]
    assert one["ttft_ms"]["n"] == 2 and one["setup_ms"]["n"] == 2 and one["step_ms"]["n"] == 4
    assert len(one["step_ms"]["samples"]) == 4 and one["ttft_ms"]["p90"] >= one["ttft_ms"]["median"] > 0
    assert one["tokens_per_s"] > 0 and result["decode_positions"] == [len(prompt), len(prompt) + 1]
    assert result["peak_rss_mb"] >= result["rss_before_mb"] > 0


class Timed(lr.Runner):
    """A runner whose set-up takes 30 ms, whose prefill takes 5 ms and whose steps take 1 ms."""

    kind = "timed"

    def __init__(self, threads=1):
        self.calls = []

    def reset(self):
        self.calls.append("reset")
        time.sleep(0.030)

    def prefill(self, prompt_ids):
        self.calls.append("prefill")
        time.sleep(0.005)
        return 1

    def step(self):
        time.sleep(0.001)
        return 2


def test_measure_times_set_up_apart_from_the_first_token(monkeypatch):
    made = []
    monkeypatch.setattr(lr, "make_runner", lambda spec, threads: made.append(Timed(threads)) or made[-1])
    result = lr.measure({"kind": "torch"}, [5, 6, 7], threads=(1, 2), decode_steps=3, warmup=1, repeats=3)
    for count in ("1", "2"):
        one = result["by_threads"][count]
        assert 28 <= one["setup_ms"]["median"] < 60 and 4 <= one["ttft_ms"]["median"] < 25  # not 35: set-up left out
        assert one["step_ms"]["n"] == 9 and 0.9 <= one["step_ms"]["median"] < 20
    assert made[0].calls[:4] == ["reset", "prefill", "reset", "prefill"] and len(made) == 2
    assert result["decode_positions"] == [4, 6] and result["warmup"] == 1 and result["repeats"] == 3


class SlowToLoad(Timed):
    def __init__(self, threads=1):
        time.sleep(0.040)  # the model's load
        super().__init__(threads)


def test_measure_times_the_load_apart_from_set_up(monkeypatch, tmp_path):
    monkeypatch.setattr(lr, "make_runner", lambda spec, threads: SlowToLoad(threads))
    spec = {"kind": "litert", "model": tmp_path / "never_mapped.tflite"}  # not the course's model: no test maps it
    result = lr.measure(spec, [5, 6, 7], threads=(2, 1), decode_steps=1, warmup=0, repeats=1)
    load = result["by_threads"]["2"]["load_ms"]
    assert load["n"] == 1 and 38 <= load["median"] < 200  # the 40 ms constructor, not the 30 ms reset
    assert result["first_load_ms"] == load["median"]  # the first runner made, whatever its thread count
    assert 28 <= result["by_threads"]["2"]["setup_ms"]["median"] < 60 and result["mapped_mb"] == {}
    assert result["copied_mb"] == result["copied_mb"]  # a number (not NaN) on Linux


def test_cold_load_counts_only_rounds_in_a_fresh_process():
    def with_load(ms):
        return {**fake_result(1.0), "first_load_ms": ms}

    measured = lr.RuntimeRounds("X", (with_load(900.0), with_load(5.0), with_load(1000.0)), (1, 1, 1), (False, True, False))
    assert measured.cold_load_ms == (950.0, 900.0, 1000.0) and measured.cold_loads == [900.0, 1000.0]  # 5 ms: kept process
    row = lr.row("X", "float32", measured, weight_bytes=1, kv_bytes=0, bandwidth_gbs=1)
    assert row.load_ms == (950.0, 900.0, 1000.0)
    assert all(math.isnan(v) for v in lr.RuntimeRounds("Y", (fake_result(1.0),), (1.0,)).cold_load_ms)


def test_mapped_files_reads_this_processes_memory_maps_by_exact_path(tmp_path):
    import mmap

    folder = tmp_path / "genai"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"x" * 4096)
    data = folder / "model.onnx.data"
    data.write_bytes(bytes(8192))
    spec = {"kind": "genai", "model_dir": folder}
    assert [f.name for f in lr.model_files(spec)] == ["model.onnx", "model.onnx.data"]
    assert lr.mapped_files(spec) == {}  # read, not mapped
    with open(data, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ):
        # model.onnx is a prefix of model.onnx.data's path: only the mapped file counts
        assert lr.mapped_files(spec) == ({"model.onnx.data": pytest.approx(0.008192)} if Path("/proc/self/maps").exists() else {})
    assert lr.model_files({"kind": "litert", "model": data}) == [data.resolve()]
    assert lr.anonymous_mb() > 0 or math.isnan(lr.anonymous_mb())


def fake_result(step_ms, ttft_ms=2.0, setup_ms=0.5, rss=100.0, threads=("1", "2")):
    samples = lambda value: {"samples": [value * f for f in (0.9, 1.0, 1.1)], "median": value, "p90": value * 1.08, "n": 3}  # noqa: E731
    return {"warmup": 1, "batch": 1, "peak_rss_mb": rss, "prompt_tokens": 3,
            "by_threads": {t: {"setup_ms": samples(setup_ms), "ttft_ms": samples(ttft_ms), "step_ms": samples(step_ms / int(t))}
                           for t in threads}}


class FakeWorker:
    """Stands for a measuring process: records when it starts and ends, returns made-up results."""

    log: list = []
    per_round = {"A": [1.0, 1.2, 1.1], "B": [2.0, 2.4, 2.2], "C": [1.15, 1.0, 1.3]}
    seen: dict = {}

    def __init__(self, *, return_freed_memory=True):
        self.alive = True
        FakeWorker.log.append("start" if not return_freed_memory else "start, collecting")
        assert sum(w.alive for w in FakeWorker.workers) == 0, "two measuring processes at once"
        FakeWorker.workers.append(self)

    def measure(self, spec, prompt_ids, *, timeout, **kwargs):
        label = spec["label"]
        FakeWorker.log.append(label)
        assert prompt_ids == [1, 2] and kwargs == {"decode_steps": 4} and self.alive
        FakeWorker.seen[label] = FakeWorker.seen.get(label, 0) + 1
        return fake_result(FakeWorker.per_round[label][FakeWorker.seen[label] - 1], rss=100 + FakeWorker.seen[label])

    def close(self, kill=False, *, skip_teardown=False):
        self.alive = False
        FakeWorker.log.append("end" if skip_teardown and not kill else "end, waited for")


def test_measure_rounds_alternates_the_order_and_keeps_every_round(monkeypatch):
    FakeWorker.log, FakeWorker.seen, FakeWorker.workers = [], {}, []
    monkeypatch.setattr(lr, "_Worker", FakeWorker)
    collections = []
    monkeypatch.setattr(lr, "_return_freed_memory", lambda: collections.append(len(FakeWorker.log)))
    specs = {label: {"kind": "torch", "label": label} for label in FakeWorker.per_round}
    measured = lr.measure_rounds(specs, [1, 2], rounds=3, decode_steps=4)
    # The caller's memory is collected once, before the first process (a large kernel's collection takes
    # a quarter of a second); each process is ended once its answer is in, without waiting for its teardown.
    assert collections == [0]
    assert [entry for entry in FakeWorker.log if entry in specs] == ["A", "B", "C", "C", "B", "A", "A", "B", "C"]
    # The last of a round is the first of the next: measured twice in a row, in the same process.
    assert FakeWorker.log.count("start") == 7 and FakeWorker.log.count("end") == 7 and not any(w.alive for w in FakeWorker.workers)
    assert measured["A"].reused == (False, False, True) and measured["C"].reused == (False, True, False)
    assert measured["B"].reused == (False, False, False)
    a = measured["A"]
    assert len(a.rounds) == 3 and len(a.process_seconds) == 3 and all(s >= 0 for s in a.process_seconds)
    assert a.ms("step") == pytest.approx((1.1, 1.0, 1.2)) and a.result("step").rounds[1] == pytest.approx((1.08, 1.2, 1.32))
    assert a.tokens_per_s(1) == pytest.approx((1e3 / 1.1, 1e3 / 1.2, 1e3 / 1.0))
    assert a.tokens_per_s(2) == pytest.approx((2e3 / 1.1, 2e3 / 1.2, 2e3 / 1.0)) and a.peak_rss_mb == (102, 101, 103)
    assert a.tail("step") == ("max", pytest.approx(1.32))  # 9 samples: too few for a p90
    with pytest.raises(ValueError, match="metric"):
        a.result("decode")
    with pytest.raises(ValueError, match="not measured at 4 thread"):
        a.ms("step", 4)
    for bad, message in [({}, "non-empty dict"), ({"A": {"kind": "tensorrt"}}, "needs a kind"),
                         ({"A": {"kind": "torch"}}, "rounds >= 1")]:
        with pytest.raises(ValueError, match=message):
            lr.measure_rounds(bad, [1], rounds=0)


def test_a_failing_measurement_ends_its_process_and_says_why(monkeypatch):
    FakeWorker.log, FakeWorker.seen, FakeWorker.workers = [], {}, []

    class Failing(FakeWorker):
        def measure(self, spec, prompt_ids, *, timeout, **kwargs):
            raise RuntimeError("measuring torch in a subprocess failed (exit 1)")

    monkeypatch.setattr(lr, "_Worker", Failing)
    with pytest.raises(RuntimeError, match="exit 1"):
        lr.measure_rounds({"A": {"kind": "torch"}}, [1, 2], rounds=2)
    assert FakeWorker.log == ["start", "end"]  # measure_rounds' own close: the real worker has killed itself already


def test_overlap_verdict_names_a_winner_only_where_the_rounds_do_not_overlap():
    apart = {"fast": (1.0, 0.9, 1.1), "slow": (2.0, 1.8, 2.2), "slower": (3.0, 2.9, 3.1)}
    assert lr.overlap_verdict(apart) == ("fast", [])
    assert lr.overlap_verdict(apart, lower_is_better=False) == ("slower", [])
    close = {"a": (1.0, 0.9, 1.3), "b": (1.3, 1.25, 1.4), "c": (2.0, 1.9, 2.1)}
    assert lr.overlap_verdict(close) == ("a", ["b"])  # b's best round (1.25) beats a's worst (1.3): a tie
    assert lr.overlap_verdict({"a": (5.0, 4.0, 6.0), "b": (6.5, 5.9, 7.0)}, lower_is_better=False) == ("b", ["a"])
    assert lr.overlap_verdict({"a": (5.0, 4.0, 6.0), "b": (7.5, 6.1, 9.0)}, lower_is_better=False) == ("b", [])
    for bad in ({"a": (1, 1, 1)}, {"a": (1, 2, 3), "b": (1, 1, 1)}, {"a": (1, 1), "b": (1, 1, 1)}):
        with pytest.raises(ValueError, match="overlap_verdict"):
            lr.overlap_verdict(bad)


def test_row_puts_the_kv_cache_in_the_ceiling_and_keeps_the_spreads(monkeypatch):
    measured = lr.RuntimeRounds("X", (fake_result(1.0), fake_result(1.25)), (3.0, 3.2))
    row = lr.row("X", "float32", measured, weight_bytes=9_000_000, kv_bytes=1_000_000, bandwidth_gbs=10.0)
    assert row.ceiling_tokens_per_s == pytest.approx(1000)  # 10 GB/s over 10 MB: weights AND cache
    assert lr.row("X", "float32", measured, weight_bytes=9_000_000, kv_bytes=0, bandwidth_gbs=10.0).ceiling_tokens_per_s \
        == pytest.approx(1e4 / 9)
    assert row.read_mb == pytest.approx(10.0) and row.kv_mb == pytest.approx(1.0)
    assert row.tokens_per_s_1[1:] == pytest.approx((800, 1000)) and row.tokens_per_s_2[2] == pytest.approx(2000)
    assert row.ttft_ms[1:] == pytest.approx((2.0, 2.0)) and row.peak_rss_mb == (100, 100, 100)
    assert row.of_ceiling == pytest.approx(row.tokens_per_s_1[0] / 1000)
    one_thread = lr.RuntimeRounds("Y", (fake_result(1.0, threads=("1",)),), (1.0,))
    assert math.isnan(lr.row("Y", "int4", one_thread, weight_bytes=1, kv_bytes=0, bandwidth_gbs=1).tokens_per_s_2[0])
    with pytest.raises(ValueError, match="positive"):
        lr.row("x", "y", measured, weight_bytes=0, kv_bytes=0, bandwidth_gbs=1)
    with pytest.raises(ValueError, match="kv_bytes >= 0"):
        lr.row("x", "y", measured, weight_bytes=1, kv_bytes=-1, bandwidth_gbs=1)
    with pytest.raises(ValueError, match="at 1 thread"):
        lr.row("x", "y", lr.RuntimeRounds("Z", (fake_result(1.0, threads=("2",)),), (1.0,)), weight_bytes=1, kv_bytes=0,
               bandwidth_gbs=1)
    with pytest.raises(TypeError, match="RuntimeRounds"):
        lr.row("x", "y", {"by_threads": {}}, weight_bytes=1, kv_bytes=0, bandwidth_gbs=1)


# --- What a decode step reads ------------------------------------------------------------------


def _onnx_model(path, *, tied: bool, int4: bool = False):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.ones((10, 4), np.float32), "table")  # 160 bytes, 16 a row
    hidden = numpy_helper.from_array(np.ones((4, 4), np.float32), "hidden")  # 64 bytes
    head = numpy_helper.from_array(np.ones((4, 10), np.float32), "head")  # 40 floats: 160 bytes
    nodes = [helper.make_node("Gather", ["table", "ids"], ["x"]), helper.make_node("MatMul", ["x", "hidden"], ["h"])]
    inits = [table, hidden]
    if tied:
        nodes += [helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
                  helper.make_node("MatMul", ["h", "table_t"], ["logits"])]
    else:
        nodes.append(helper.make_node("MatMul", ["h", "head"], ["logits"]))
        inits.append(head)
    if int4:
        inits.append(helper.make_tensor("packed", TensorProto.INT4, [8], bytes(4), raw=True))  # 8 int4 values: 4 bytes
        nodes.append(helper.make_node("Identity", ["packed"], ["packed_out"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_step_read_bytes_of_an_onnx_graph_counts_a_looked_up_table_once_per_row(tmp_path):
    # Untied: one row of the embedding (16), the hidden layer (64), the output layer (160).
    assert lr.step_read_bytes(_onnx_model(tmp_path / "untied.onnx", tied=False)) == 16 + 64 + 160
    # Tied: the table is the output layer too, so a step reads all of it, once (not 160 + 16).
    assert lr.step_read_bytes(_onnx_model(tmp_path / "tied.onnx", tied=True)) == 160 + 64
    # int4 values are half a byte each, as stored.
    assert lr.step_read_bytes(_onnx_model(tmp_path / "extra.onnx", tied=True, int4=True)) == 160 + 64 + 4


def test_step_read_bytes_of_a_torch_module_counts_tied_weights_once():
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self, tied):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)  # 160 bytes, 16 a row
            self.norm = torch.nn.LayerNorm(4)  # 2 x 16 bytes
            self.head = torch.nn.Linear(4, 10, bias=False)  # 160 bytes
            if tied:
                self.head.weight = self.embed.weight

    assert lr.step_read_bytes(Tiny(tied=False)) == 16 + 32 + 160
    assert lr.step_read_bytes(Tiny(tied=True)) == 160 + 32
    model, _ = lm.load_language_model()  # the course's model: its embedding is its output layer
    assert lr.step_read_bytes(model) == sum(p.numel() * 4 for p in model.parameters())


def test_step_read_bytes_of_a_tflite_signature(tmp_path):
    import contextlib
    import io

    import litert_torch
    import torch

    class Decode(torch.nn.Module):
        def __init__(self, tied):
            super().__init__()
            self.embed = torch.nn.Embedding(64, 8)  # 2048 bytes, 32 a row
            self.hidden = torch.nn.Linear(8, 8, bias=False)  # 256 bytes
            self.head = torch.nn.Linear(8, 64, bias=False)  # 2048 bytes
            torch.nn.init.normal_(self.hidden.weight), torch.nn.init.normal_(self.head.weight)
            if tied:
                self.head.weight = self.embed.weight

        def forward(self, tokens):
            return self.head(torch.relu(self.hidden(self.embed(tokens))))

    read = {}
    for tied in (False, True):
        path = tmp_path / f"tied_{tied}.tflite"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            (litert_torch.signature("decode", Decode(tied).eval(), sample_kwargs={"tokens": torch.zeros(1, 1, dtype=torch.int32)})
             .convert().export(str(path)))
        read[tied] = lr.step_read_bytes(path)
    assert read[False] - 256 - 2048 in range(32, 32 + 64)  # one row of the table (+ a few shape constants)
    assert read[True] - 256 - 2048 in range(0, 64)  # the shared table once, not a second time for the lookup
    with pytest.raises(ValueError, match="no signature 'prefill'"):
        lr.step_read_bytes(path, signature="prefill")


def test_step_read_bytes_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        lr.step_read_bytes(tmp_path / "missing.onnx")
    (tmp_path / "m.pte").write_bytes(b"x")
    with pytest.raises(ValueError, match=".onnx and .tflite"):
        lr.step_read_bytes(tmp_path / "m.pte")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        lr.step_read_bytes(42)


# --- Real measuring processes, on a toy LiteRT model (seconds) ----------------------------------


@pytest.fixture(scope="module")
def toy_litert(tmp_path_factory):
    import contextlib
    import io

    import litert_torch
    import torch

    class ToyStep(torch.nn.Module):
        """export_hf's interface with a trivial model: the next token is (the position + 1) mod 8."""

        def __init__(self, logits: bool):
            super().__init__()
            self.logits = logits

        def forward(self, tokens, input_pos, mask, kv_cache_k_0, kv_cache_v_0):
            out = {"kv_cache_k_0": kv_cache_k_0 + 0.0, "kv_cache_v_0": kv_cache_v_0 + 0.0}
            if self.logits:
                position = torch.remainder(input_pos.float() + 1, 8)
                out["logits"] = -((torch.arange(8, dtype=torch.float32) - position) ** 2).reshape(1, 1, 8)
            return out

    def sample(n):
        return dict(tokens=torch.zeros(1, n, dtype=torch.int32), input_pos=torch.arange(n, dtype=torch.int32),
                    mask=torch.zeros(1, 1, n, 16), kv_cache_k_0=torch.zeros(1, 1, 16, 1), kv_cache_v_0=torch.zeros(1, 1, 1, 16))

    path = tmp_path_factory.mktemp("lm_runtimes") / "toy.tflite"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        (litert_torch.signature("prefill_4", ToyStep(False).eval(), sample_kwargs=sample(4))
         .signature("decode", ToyStep(True).eval(), sample_kwargs=sample(1)).convert().export(str(path)))
    return path


def test_a_worker_process_serves_several_measurements_and_rounds_reuse_it_only_back_to_back(toy_litert):
    spec = {"kind": "litert", "model": toy_litert}
    runner = lr.make_runner(spec)
    runner.reset()
    assert runner.prefill([3, 1, 2]) == 3 and runner.step() == 4  # positions 0-2 prefilled: the next is 3, then 4
    worker = lr._Worker()
    try:
        first = worker.measure(spec, [3, 1, 2], threads=(1,), decode_steps=2, warmup=0, repeats=1)
        second = worker.measure(spec, [3, 1, 2], threads=(1,), decode_steps=2, warmup=0, repeats=1)
    finally:
        worker.close()
    assert first["pid"] == second["pid"] != os.getpid() and first["by_threads"]["1"]["step_ms"]["n"] == 2
    assert worker.process.returncode == 0  # input closed: it left its loop and exited normally
    hurried = lr._Worker(return_freed_memory=False)
    answer = hurried.measure(spec, [3, 1, 2], threads=(1,), decode_steps=2, warmup=0, repeats=1)
    hurried.close(skip_teardown=True)
    assert hurried.process.returncode == -signal.SIGTERM and answer["by_threads"]["1"]["step_ms"]["n"] == 2
    assert hurried.process.stdin.closed and hurried.errors.closed  # nothing left open until a collection
    measured = lr.measure_rounds({"A": spec, "B": dict(spec)}, [3, 1, 2], rounds=3, threads=(1,), decode_steps=2,
                                 warmup=0, repeats=1)
    pids = {label: [r["pid"] for r in m.rounds] for label, m in measured.items()}  # A B | B A | A B
    assert pids["A"][1] == pids["A"][2] != pids["A"][0] and pids["B"][0] == pids["B"][1] != pids["B"][2]
    assert len({pids["A"][0], pids["A"][1], pids["B"][0], pids["B"][2]}) == 4
    assert measured["A"].reused == (False, False, True) and measured["B"].reused == (False, True, False)
    import psutil  # every measuring process has ended and been reaped: none alive, no zombie

    assert not [c for c in psutil.Process().children(recursive=True) if "deploykit.lm_runtimes" in " ".join(c.cmdline())]


def test_a_worker_that_takes_too_long_is_ended_with_the_reason():
    worker = lr._Worker()
    with pytest.raises(RuntimeError, match=r"measuring torch in a subprocess failed \(no result within 0.2 s\)"):
        worker.measure({"kind": "torch"}, [1, 2], timeout=0.2, threads=(1,))  # importing torch alone takes longer
    assert worker.process.poll() is not None


def test_a_worker_that_dies_halfway_through_its_answer_is_reported_with_its_errors(tmp_path, monkeypatch):
    fake = tmp_path / "python"  # stands in for the interpreter: half an answer, a complaint, exit 3
    fake.write_text("#!/bin/sh\nread request\nprintf '{\"pid\": 1, \"by_thr'\necho 'out of memory' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    worker = lr._Worker(return_freed_memory=False)
    with pytest.raises(RuntimeError, match=r"(?s)failed \(its answer was cut short\):\nout of memory"):
        worker.measure({"kind": "torch"}, [1, 2], threads=(1,))
    assert worker.process.returncode == 3 and worker.errors.closed and worker.process.stdin.closed


def test_the_executorch_runtime_loads_without_its_exporter():
    code = ("import sys; from deploykit import lm_runtimes as lr; lr.executorch_runtime(); "
            "print('executorch.exir' in sys.modules, 'torchao' in sys.modules); "
            "import executorch.exir; print(hasattr(executorch.exir, 'to_edge_transform_and_lower'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False", "True"]  # the exporter still imports whole afterwards


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only: VmHWM")
def test_peak_memory_is_in_decimal_mb():
    from deploykit import lm_runtimes as lr

    peak = lr.peak_rss_mb()
    with open("/proc/self/status") as status:
        kib = int(next(line.split()[1] for line in status if line.startswith("VmHWM")))
    assert peak == pytest.approx(kib * 1024 / 1e6, rel=0.05)  # 10^6 bytes: kB / 1024 (MiB) would be 4.6 % less
    assert peak > kib / 1024 * 1.03
