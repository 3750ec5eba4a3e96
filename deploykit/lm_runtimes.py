"""Lecture 14's helpers: the course's language model in LLM runtimes, cached, run and measured alike.

The conversions themselves (ONNX Runtime GenAI's model builder, ``torch.export`` and ExecuTorch's
``to_edge_transform_and_lower``, ``torch.onnx.export``) stay in the notebook. This module gives them:

* :func:`lm_artifact` / :func:`build_once`: a place in ``artifacts/lm/`` named after the weights'
  hash (``<name>_<hash12>[suffix]``, the naming lecture 13 uses), built once, its build time kept in a
  ``.build.json`` beside it so a warm run can still say how long the conversion took;
  :func:`start_build` does the same for a conversion command run in a process of its own, in the
  background until ``.wait()``;
* one runner per runtime with the same two calls, ``start(prompt_ids) -> first token`` (a fresh
  cache, the prompt's prefill, greedy choice) and ``step() -> next token`` (one decode step on the
  token chosen last), so every runtime is timed by the same code (:func:`measure`);
* :func:`measure_in_subprocess`: :func:`measure` in a fresh Python process per runtime, so that its
  peak resident memory is that runtime's own and not the notebook's.

ONNX Runtime and ONNX Runtime GenAI record usage events in an offline store on disk
(``~/.cache/Microsoft/DeveloperTools/.onnxruntime/*.db``, Microsoft's 1DS telemetry SDK) unless
``ORT_DISABLE_TELEMETRY=1`` is set before ``onnxruntime`` is imported: ``import deploykit`` (which importing
this module runs first) sets it unless the user chose otherwise (``deploykit._offline``), and every
measuring subprocess inherits it.
"""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ._quiet import converter_output_silenced

#: The runners :func:`make_runner` knows, by the ``kind`` a spec names.
KINDS = ("torch", "ort", "genai", "executorch", "litert")
_HASH12 = re.compile(r"^[0-9a-f]{12}$")
BUILD_SUFFIX = ".build.json"


def weights_tag(tag: str | None = None) -> str:
    """The first 12 hex digits of the shipped weights' SHA-256 (or ``tag``, checked)."""
    if tag is None:
        from .language_model import weights_sha256

        tag = weights_sha256()[:12]
    if not isinstance(tag, str) or not _HASH12.match(tag):
        raise ValueError(f"expected a weights tag of 12 lowercase hex digits (lm.weights_sha256()[:12]), got {tag!r}")
    return tag


def lm_artifact(name: str, suffix: str = "", tag: str | None = None) -> Path:
    """``artifacts/lm/<name>_<hash12><suffix>``: a file (``suffix=".pte"``) or a folder (``suffix=""``).

    The same weights give the same path, new weights a new one; lecture 13's ``prefill``/``decode``
    names give its files (``lm_artifact("decode", ".onnx")``), so either notebook reuses the other's.
    """
    from .paths import artifact_path

    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        raise ValueError(f"lm_artifact expected a plain name like 'genai_int4' (letters, digits, _ . -), got {name!r}")
    if not isinstance(suffix, str) or (suffix and not re.match(r"^\.[A-Za-z0-9.]+$", suffix)):
        raise ValueError(f"lm_artifact expected a suffix like '.pte' or '' (a folder), got {suffix!r}")
    return artifact_path(f"lm/{name}_{weights_tag(tag)}{suffix}")


@dataclass
class Build:
    """Where a conversion's output is, how long building it took (measured when it was built) and
    whether this call reused it."""

    path: Path
    seconds: float
    cached: bool

    def __str__(self) -> str:
        how = "reused from artifacts/lm (built" if self.cached else "built now ("
        return f"{self.path.name}: {how} in {self.seconds:.1f} s)"


def _reused(path: Path) -> Build | None:
    """The finished output at ``path`` with its recorded build time, or None if it must be built."""
    if not path.exists():
        return None
    record = path.with_name(path.name + BUILD_SUFFIX)
    return Build(path, json.loads(record.read_text())["seconds"] if record.exists() else float("nan"), cached=True)


def _fresh_partial(path: Path) -> Path:
    """``path`` with ``.partial`` added, with whatever an interrupted build left there removed."""
    partial = path.with_name(path.name + ".partial")
    if partial.is_dir():
        shutil.rmtree(partial)
    elif partial.exists():
        partial.unlink()
    return partial


def _finish(path: Path, seconds: float, who: str) -> Build:
    """Move a build's ``.partial`` output into place and record how long it took."""
    partial = path.with_name(path.name + ".partial")
    if not partial.exists() or (partial.is_dir() and not any(partial.iterdir())):
        raise FileNotFoundError(f"{who} wrote nothing at {partial} (it must write there)")
    partial.rename(path)
    path.with_name(path.name + BUILD_SUFFIX).write_text(json.dumps({"seconds": round(seconds, 3)}))
    return Build(path, seconds, cached=False)


def build_once(path: Path, build: Callable[[Path], object], *, quiet: bool = False) -> Build:
    """Run ``build(partial_path)`` unless ``path`` exists, then move the partial output into place.

    ``build`` writes a file or a folder at the path it is given (``path`` with ``.partial`` added), so
    an interrupted conversion never leaves something that looks finished. The build time is kept in
    ``<path>.build.json``. ``quiet=True`` silences the build's prints, progress bars, warnings and native
    log lines (a converter's console output is not the lesson).
    """
    path = Path(path)
    if not callable(build):
        raise TypeError(f"build_once expected a function taking the output path, got {type(build).__name__}")
    reused = _reused(path)
    if reused:
        return reused
    partial = _fresh_partial(path)
    start = time.perf_counter()
    if quiet:
        with converter_output_silenced():
            build(partial)
    else:
        build(partial)
    return _finish(path, time.perf_counter() - start, "build_once: the build function")


class PendingBuild:
    """A conversion command running in a process of its own (:func:`start_build`). ``wait()`` returns its
    :class:`Build` once the command has finished and its output is in place."""

    def __init__(self, path: Path, process: subprocess.Popen | None, output, started: float, result: Build | None = None):
        self.path, self._process, self._output, self._started, self._result = path, process, output, started, result

    def done(self) -> bool:
        """Whether the command has ended (``wait()`` will not block)."""
        return self._result is not None or self._process.poll() is not None

    def wait(self, timeout: float | None = None) -> Build:
        if self._result is not None:
            return self._result
        code = self._process.wait(timeout)
        seconds = time.perf_counter() - self._started
        self._output.seek(0)
        tail = "\n".join(self._output.read().decode(errors="replace").strip().splitlines()[-8:])
        self._output.close()
        if code != 0:
            raise RuntimeError(f"building {self.path.name} failed (exit {code}); the command's last lines:\n{tail}")
        self._result = _finish(self.path, seconds, "start_build: the command")
        return self._result


def start_build(path: Path, command: list, *, env: dict | None = None) -> PendingBuild:
    """Start ``command`` in the background unless ``path`` exists; ``.wait()`` on the result gives the :class:`Build`.

    ``command`` is a list of arguments; the one written ``"{partial}"`` is replaced by the path the command
    must write (``path`` with ``.partial`` added: a file or a folder), renamed to ``path`` when it exits
    successfully, as :func:`build_once` does. Its output is kept only to explain a failure. ``env``: extra
    environment variables. A conversion in its own process returns its memory to the system when it ends.
    """
    path = Path(path)
    if not isinstance(command, (list, tuple)) or not command or not all(isinstance(a, (str, Path)) for a in command):
        raise TypeError(f"start_build expected the command as a list of arguments, got {command!r}")
    if sum(str(a) == "{partial}" for a in command) != 1:
        raise ValueError("start_build expected exactly one argument \"{partial}\": where the command writes its output")
    reused = _reused(path)
    if reused:
        return PendingBuild(path, None, None, 0.0, reused)
    partial = _fresh_partial(path)
    output = tempfile.TemporaryFile()
    arguments = [str(partial) if str(a) == "{partial}" else str(a) for a in command]
    started = time.perf_counter()
    process = subprocess.Popen(arguments, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**os.environ, **(env or {})})
    return PendingBuild(path, process, output, started)


def size_bytes(path: Path) -> int:
    """Bytes of a file, or of every file in a folder (build records excluded)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"size_bytes: {path} does not exist")
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.endswith(BUILD_SUFFIX))


# ----------------------------------------------------------------------------------------------
# Runners: start(prompt_ids) -> first token, step() -> next token. Greedy (argmax) everywhere.


def _check_prompt(prompt_ids) -> list[int]:
    ids = [int(i) for i in prompt_ids]
    if not ids:
        raise ValueError("start expected a non-empty list of prompt token ids")
    return ids


def _check_threads(threads) -> int:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads expected an int >= 1, got {threads!r}")
    return threads


def _require(path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}: run the notebook's conversion cell first (it caches it in artifacts/lm)")
    return path


class TorchRunner:
    """PyTorch eager, ``transformers``' own ``DynamicCache`` (the reference)."""

    kind = "torch"

    def __init__(self, threads: int = 1):
        import torch

        from .language_model import load_language_model

        torch.set_num_threads(_check_threads(threads))
        self.torch = torch
        self.model, _ = load_language_model()

    def start(self, prompt_ids) -> int:
        from transformers.cache_utils import DynamicCache

        ids = self.torch.tensor([_check_prompt(prompt_ids)])
        self.cache = DynamicCache()
        self.length = ids.shape[1]
        with self.torch.inference_mode():
            logits = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True).logits
        self.last = int(logits[0, -1].argmax())
        return self.last

    def step(self) -> int:
        ids = self.torch.tensor([[self.last]])
        positions = self.torch.tensor([[self.length]])
        with self.torch.inference_mode():
            logits = self.model(input_ids=ids, past_key_values=self.cache, position_ids=positions, use_cache=True).logits
        self.length += 1
        self.last = int(logits[0, -1].argmax())
        return self.last


class OrtLoopRunner:
    """Lecture 13's loop: ONNX Runtime sessions of the prefill and decode graphs, the KV cache as
    stacked tensors fed back by Python."""

    kind = "ort"

    def __init__(self, prefill_path, decode_path, threads: int = 1):
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = _check_threads(threads)
        self.np = np
        self.prefill = ort.InferenceSession(str(_require(prefill_path, "prefill graph")), options,
                                            providers=["CPUExecutionProvider"])
        self.decode = ort.InferenceSession(str(_require(decode_path, "decode graph")), options,
                                           providers=["CPUExecutionProvider"])

    def start(self, prompt_ids) -> int:
        ids = self.np.array([_check_prompt(prompt_ids)], dtype=self.np.int64)
        logits, self.keys, self.values = self.prefill.run(None, {"input_ids": ids})
        self.last = int(logits[0, -1].argmax())
        return self.last

    def step(self) -> int:
        feed = {"input_ids": self.np.array([[self.last]], dtype=self.np.int64), "past_keys": self.keys,
                "past_values": self.values}
        logits, self.keys, self.values = self.decode.run(None, feed)
        self.last = int(logits[0, -1].argmax())
        return self.last


class GenaiRunner:
    """ONNX Runtime GenAI: ``og.Model`` from the model builder's folder, ``og.Generator`` greedy."""

    kind = "genai"

    def __init__(self, model_dir, threads: int = 1, max_length: int = 512):
        import onnxruntime_genai as og

        config = og.Config(str(_require(model_dir, "ONNX Runtime GenAI model folder")))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": _check_threads(threads)}}}}))
        self.og = og
        self.model = og.Model(config)
        self.max_length = max_length

    def start(self, prompt_ids) -> int:
        ids = _check_prompt(prompt_ids)
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=self.max_length)
        self.generator = self.og.Generator(self.model, params)
        self.generator.append_tokens([ids])  # runs the prefill
        return self.step()

    def step(self) -> int:
        self.generator.generate_next_token()  # runs the model on the last token (not on the first call), picks the next
        return int(self.generator.get_next_tokens()[0])


class ExecuTorchRunner:
    """ExecuTorch: a ``.pte`` program with a static KV cache inside (``transformers``' exportable
    module), run by ``executorch.runtime``; ``cache_position`` says where the new tokens go."""

    kind = "executorch"

    def __init__(self, pte_path, threads: int = 1):
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        portable_lib._unsafe_reset_threadpool(_check_threads(threads))  # XNNPACK's threads
        self.torch = torch
        program = Runtime.get().load_program(str(_require(pte_path, "ExecuTorch program (.pte)")))
        self.method = program.load_method("forward")

    def start(self, prompt_ids) -> int:
        ids = _check_prompt(prompt_ids)
        logits = self.method.execute([self.torch.tensor([ids]), self.torch.arange(len(ids))])[0]
        self.position = len(ids)
        self.last = int(logits[0, -1].argmax())
        return self.last

    def step(self) -> int:
        logits = self.method.execute([self.torch.tensor([[self.last]]), self.torch.tensor([self.position])])[0]
        self.position += 1
        self.last = int(logits[0, -1].argmax())
        return self.last


class LiteRTRunner:
    """LiteRT: the ``prefill_<N>``/``decode`` signatures of a ``.tflite`` (fixed-size KV cache, ``input_pos``,
    ``mask``), run by ``ai_edge_litert`` signature runners through ``deploykit.lm_litert.SignatureLM``."""

    kind = "litert"

    def __init__(self, model_path, threads: int = 1):
        import numpy as np

        from .litert import load_interpreter
        from .lm_litert import SignatureLM

        self.np = np
        self.lm = SignatureLM(load_interpreter(_require(model_path, "LiteRT model (.tflite)"),
                                               num_threads=_check_threads(threads)))

    def start(self, prompt_ids) -> int:
        self.last = int(self.np.argmax(self.lm.start(self.np.array(_check_prompt(prompt_ids), dtype=self.np.int64))))
        return self.last

    def step(self) -> int:
        self.last = int(self.np.argmax(self.lm.step(self.last)))
        return self.last


def make_runner(spec: dict, threads: int = 1):
    """A runner from a JSON-able spec: ``{"kind": "ort", "prefill": path, "decode": path}``,
    ``{"kind": "genai", "model_dir": path}``, ``{"kind": "executorch", "pte": path}``,
    ``{"kind": "torch"}``, ``{"kind": "litert", "model": path}`` (lecture 14's LiteRT section)."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"make_runner expected a dict with a 'kind' ({', '.join(KINDS)}), got {spec!r}")
    kind = spec["kind"]
    needs = {"torch": (), "ort": ("prefill", "decode"), "genai": ("model_dir",), "executorch": ("pte",),
             "litert": ("model",)}
    if kind not in needs:
        raise ValueError(f"make_runner: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    missing = [key for key in needs[kind] if key not in spec]
    if missing:
        raise ValueError(f"make_runner: a {kind!r} spec needs {', '.join(missing)}; got keys {sorted(spec)}")
    _check_threads(threads)
    if kind == "torch":
        return TorchRunner(threads)
    if kind == "ort":
        return OrtLoopRunner(spec["prefill"], spec["decode"], threads)
    if kind == "genai":
        return GenaiRunner(spec["model_dir"], threads)
    if kind == "executorch":
        return ExecuTorchRunner(spec["pte"], threads)
    return LiteRTRunner(spec["model"], threads)


def greedy(runner, prompt_ids, n_new: int) -> list[int]:
    """``n_new`` greedy tokens after the prompt (stops early at end-of-text, id 0)."""
    if not isinstance(n_new, int) or n_new < 1:
        raise ValueError(f"greedy expected n_new >= 1, got {n_new!r}")
    tokens = [runner.start(prompt_ids)]
    while len(tokens) < n_new and tokens[-1] != 0:
        tokens.append(runner.step())
    return tokens


# ----------------------------------------------------------------------------------------------
# Measurement


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this program's own memory.
    Not ``getrusage``'s ``ru_maxrss``: Linux keeps that across ``execve``, so a subprocess started
    from a big notebook kernel would report the kernel's peak as its own.
    """
    status = Path("/proc/self/status")
    if status.exists():
        match = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.M)
        if match:
            return int(match.group(1)) / 1024
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # kilobytes on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def measure(spec: dict, prompt_ids, *, threads=(1, 2), decode_steps: int = 32, warmup: int = 3,
            repeats: int = 10) -> dict:
    """Time to first token and decode speed of one runtime, in this process.

    For each thread count: a runner is made; **time to first token** is ``start(prompt)`` (a fresh
    cache, the prefill, the greedy choice), ``warmup`` untimed then ``repeats`` timed; **decode** is
    ``step()`` timed one token at a time, ``warmup`` untimed steps then ``decode_steps`` timed ones,
    after a fresh ``start``, ``repeats`` times over (every step sample kept). Median and 90th
    percentile of each, and the peak resident memory of the process.
    """
    from .bench import percentile

    prompt_ids = _check_prompt(prompt_ids)
    if not isinstance(threads, (tuple, list)) or not threads:
        raise ValueError(f"measure expected threads as a non-empty tuple like (1, 2), got {threads!r}")
    for name, value, low in (("decode_steps", decode_steps, 1), ("warmup", warmup, 0), ("repeats", repeats, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"measure expected {name} >= {low}, got {value!r}")
    rss_before = peak_rss_mb()
    results = {"spec": spec, "prompt_tokens": len(prompt_ids), "by_threads": {}}
    for count in threads:
        runner = make_runner(spec, _check_threads(count))
        first = []
        for i in range(warmup + repeats):
            start = time.perf_counter()
            runner.start(prompt_ids)
            if i >= warmup:
                first.append((time.perf_counter() - start) * 1e3)
        steps = []
        for _ in range(repeats):
            runner.start(prompt_ids)
            for i in range(warmup + decode_steps):
                start = time.perf_counter()
                runner.step()
                if i >= warmup:
                    steps.append((time.perf_counter() - start) * 1e3)
        results["by_threads"][str(count)] = {
            "ttft_ms": {"median": percentile(first, 50), "p90": percentile(first, 90), "n": len(first)},
            "step_ms": {"median": percentile(steps, 50), "p90": percentile(steps, 90), "n": len(steps)},
            "tokens_per_s": 1e3 / percentile(steps, 50),
        }
        del runner
    results["rss_before_mb"] = rss_before
    results["peak_rss_mb"] = peak_rss_mb()
    return results


def _return_freed_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc's ``malloc_trim``), so
    that memory this process freed (say, after a conversion) does not add to its child's while it runs."""
    import ctypes
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


def measure_in_subprocess(spec: dict, prompt_ids, *, timeout: float = 300, **kwargs) -> dict:
    """:func:`measure` in a fresh Python (``python -m deploykit.lm_runtimes``), so ``peak_rss_mb`` is
    this runtime's process alone: interpreter, its libraries, the model and the run."""
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise ValueError(f"measure_in_subprocess expected a spec with a kind in {KINDS}, got {spec!r}")
    _return_freed_memory()
    request = json.dumps({"spec": {k: str(v) if isinstance(v, Path) else v for k, v in spec.items()},
                          "prompt_ids": _check_prompt(prompt_ids), "kwargs": kwargs})
    done = subprocess.run([sys.executable, "-m", "deploykit.lm_runtimes"], input=request, capture_output=True,
                          text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-6:])
        raise RuntimeError(f"measuring {spec.get('kind')} in a subprocess failed (exit {done.returncode}):\n{tail}")
    return json.loads(lines[-1])


@dataclass
class Row:
    """One line of the lecture's table: a runtime at one precision."""

    runtime: str
    precision: str
    file_mb: float
    ttft_ms: float
    ttft_p90_ms: float
    tokens_per_s_1: float
    tokens_per_s_2: float
    step_p90_ms_1: float
    peak_rss_mb: float
    ceiling_tokens_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def row(runtime: str, precision: str, measured: dict, weight_bytes: int, bandwidth_gbs: float) -> Row:
    """A table row from :func:`measure`'s result; the ceiling is bandwidth / bytes read per token."""
    if weight_bytes <= 0 or bandwidth_gbs <= 0:
        raise ValueError(f"row expected positive weight_bytes and bandwidth_gbs, got {weight_bytes}, {bandwidth_gbs}")
    one, two = measured["by_threads"].get("1"), measured["by_threads"].get("2")
    if one is None:
        raise ValueError("row expected a measurement at 1 thread (measure(..., threads=(1, 2)))")
    return Row(runtime, precision, weight_bytes / 1e6, one["ttft_ms"]["median"], one["ttft_ms"]["p90"],
               one["tokens_per_s"], two["tokens_per_s"] if two else float("nan"), one["step_ms"]["p90"],
               measured["peak_rss_mb"], bandwidth_gbs * 1e9 / weight_bytes)


def _main() -> None:
    request = json.loads(sys.stdin.read())
    result = measure(request["spec"], request["prompt_ids"], **request.get("kwargs", {}))
    print(json.dumps(result))


if __name__ == "__main__":
    _main()
