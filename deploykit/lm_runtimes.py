"""Lecture 14's helpers: the course's language model in LLM runtimes, cached, run and measured alike.

The conversions themselves (ONNX Runtime GenAI's model builder, ``torch.export`` and ExecuTorch's
``to_edge_transform_and_lower``, ``torch.onnx.export``) stay in the notebook. This module gives them:

* :func:`lm_artifact` / :func:`build_once`: a place in ``artifacts/lm/`` named after the weights'
  hash (``<name>_<hash12>[suffix]``, the naming lecture 13 uses), built once, its build time kept in a
  ``.build.json`` beside it so a warm run can still say how long the conversion took;
  :func:`start_build` does the same for a conversion command run in a process of its own, in the
  background until ``.wait()``;
* one runner per runtime with the same calls: ``reset()`` (the set-up of a new generation: a fresh
  cache, generator or session state), ``prefill(prompt_ids) -> first token`` (every prompt position
  computed, then the greedy choice), ``start(prompt_ids)`` (the two together) and ``step() -> next
  token`` (one decode step on the token chosen last), so every runtime is timed by the same code
  (:func:`measure`), set-up apart from time to first token;
* :func:`measure_in_subprocess`: :func:`measure` in a fresh Python process per runtime, so that its
  peak resident memory is that runtime's own and not the notebook's; :func:`measure_rounds`: that, in
  repeated rounds whose order alternates (``deploykit.bench.benchmark_rounds``' rule), and
  :func:`overlap_verdict`: a winner only where the rounds do not overlap;
* :func:`step_read_bytes`: the weight bytes one decode step reads, counted from an ONNX graph
  (``deploykit.bench.weight_bytes_read``), a ``.tflite`` signature or a PyTorch module (each weight
  once, a lookup table one row).

ONNX Runtime and ONNX Runtime GenAI record usage events in an offline store on disk
(``~/.cache/Microsoft/DeveloperTools/.onnxruntime/*.db``, Microsoft's 1DS telemetry SDK) unless
``ORT_DISABLE_TELEMETRY=1`` is set before ``onnxruntime`` is imported: ``import deploykit`` (which importing
this module runs first) sets it unless the user chose otherwise (``deploykit._offline``), and every
measuring subprocess inherits it.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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
# Runners: reset() -> set-up, prefill(prompt_ids) -> first token, start = both, step() -> next token.
# Greedy (argmax) everywhere.


def _check_prompt(prompt_ids) -> list[int]:
    ids = [int(i) for i in prompt_ids]
    if not ids:
        raise ValueError("prefill expected a non-empty list of prompt token ids")
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


class Runner:
    """The calls every runtime's runner has. ``reset()``: the set-up of a new generation (what a fresh
    cache, generator or session costs; timed apart from the first token). ``prefill(prompt_ids)``:
    every prompt position computed, then the greedy choice of the first new token (time to first
    token). ``step()``: one decode step on the token chosen last."""

    kind = ""

    def reset(self) -> None:
        raise NotImplementedError

    def prefill(self, prompt_ids) -> int:
        raise NotImplementedError

    def step(self) -> int:
        raise NotImplementedError

    def start(self, prompt_ids) -> int:
        """A new generation: ``reset()`` then ``prefill(prompt_ids)``; the first token."""
        self.reset()
        return self.prefill(prompt_ids)


class TorchRunner(Runner):
    """PyTorch eager, ``transformers``' own ``DynamicCache`` (the reference)."""

    kind = "torch"

    def __init__(self, threads: int = 1):
        import torch

        from .language_model import load_language_model

        torch.set_num_threads(_check_threads(threads))
        self.torch = torch
        self.model, _ = load_language_model()

    def reset(self) -> None:
        from transformers.cache_utils import DynamicCache

        self.cache = DynamicCache()  # empty: it grows as the prefill and every step append to it

    def prefill(self, prompt_ids) -> int:
        ids = self.torch.tensor([_check_prompt(prompt_ids)])
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


class OrtLoopRunner(Runner):
    """Lecture 13's loop: ONNX Runtime sessions of the prefill and decode graphs, the KV cache as
    stacked tensors fed back by Python."""

    kind = "ort"

    def __init__(self, prefill_path, decode_path, threads: int = 1):
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = _check_threads(threads)
        self.np = np
        self.prefill_session = ort.InferenceSession(str(_require(prefill_path, "prefill graph")), options,
                                                    providers=["CPUExecutionProvider"])
        self.decode_session = ort.InferenceSession(str(_require(decode_path, "decode graph")), options,
                                                   providers=["CPUExecutionProvider"])

    def reset(self) -> None:
        self.keys = self.values = None  # nothing to allocate: the prefill graph returns the first cache

    def prefill(self, prompt_ids) -> int:
        ids = self.np.array([_check_prompt(prompt_ids)], dtype=self.np.int64)
        logits, self.keys, self.values = self.prefill_session.run(None, {"input_ids": ids})
        self.last = int(logits[0, -1].argmax())
        return self.last

    def step(self) -> int:
        feed = {"input_ids": self.np.array([[self.last]], dtype=self.np.int64), "past_keys": self.keys,
                "past_values": self.values}
        logits, self.keys, self.values = self.decode_session.run(None, feed)
        self.last = int(logits[0, -1].argmax())
        return self.last


class GenaiRunner(Runner):
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

    def reset(self) -> None:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=self.max_length)
        self.generator = self.og.Generator(self.model, params)  # its state: a cache buffer of max_length positions

    def prefill(self, prompt_ids) -> int:
        self.generator.append_tokens([_check_prompt(prompt_ids)])  # runs the model on the whole prompt
        return self.step()  # the first call runs no model: it picks from the prompt's last logits

    def step(self) -> int:
        self.generator.generate_next_token()  # runs the model on the last token (not on the first call), picks the next
        return int(self.generator.get_next_tokens()[0])


def executorch_runtime():
    """``(portable_lib, Runtime)``: ExecuTorch's Python binding and its runtime API, without its exporter.

    ``executorch.extension.pybindings.portable_lib`` imports ``executorch.exir`` (the whole exporter:
    ``torch._dynamo``, ``torch._inductor``, ``torchao``; seconds and a few hundred MB) for a single name,
    the warning class of ``executorch.exir._warnings``. Running a program needs none of it. Unless the
    exporter is loaded already, that one small module is loaded on its own, the binding imported, and
    ``executorch.exir`` left unimported (a later ``import executorch.exir`` loads it whole, as usual).
    """
    import importlib.util
    import types

    if "executorch.extension.pybindings.portable_lib" not in sys.modules and "executorch.exir" not in sys.modules:
        found = importlib.util.find_spec("executorch")
        folder = Path(next(iter(found.submodule_search_locations))) / "exir"
        package = types.ModuleType("executorch.exir")
        package.__path__ = [str(folder)]
        spec = importlib.util.spec_from_file_location("executorch.exir._warnings", folder / "_warnings.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["executorch.exir"], sys.modules["executorch.exir._warnings"] = package, module
        try:
            spec.loader.exec_module(module)
            from executorch.extension.pybindings import portable_lib  # noqa: F401
        finally:
            del sys.modules["executorch.exir"], sys.modules["executorch.exir._warnings"]
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    return portable_lib, Runtime


class ExecuTorchRunner(Runner):
    """ExecuTorch: a ``.pte`` program with a static KV cache inside (``transformers``' exportable
    module), run by ``executorch.runtime``; ``cache_position`` says where the new tokens go."""

    kind = "executorch"

    def __init__(self, pte_path, threads: int = 1):
        import torch

        portable_lib, Runtime = executorch_runtime()
        portable_lib._unsafe_reset_threadpool(_check_threads(threads))  # XNNPACK's threads
        self.torch = torch
        program = Runtime.get().load_program(str(_require(pte_path, "ExecuTorch program (.pte)")))
        self.method = program.load_method("forward")

    def reset(self) -> None:
        # The static cache stays inside the method: a new generation writes from position 0, and the
        # causal mask built from cache_position hides every slot not yet written again.
        self.position = 0

    def prefill(self, prompt_ids) -> int:
        ids = _check_prompt(prompt_ids)
        logits = self.method.execute([self.torch.tensor([ids]), self.torch.arange(self.position, self.position + len(ids))])[0]
        self.position += len(ids)
        self.last = int(logits[0, -1].argmax())
        return self.last

    def step(self) -> int:
        logits = self.method.execute([self.torch.tensor([[self.last]]), self.torch.tensor([self.position])])[0]
        self.position += 1
        self.last = int(logits[0, -1].argmax())
        return self.last


class LiteRTRunner(Runner):
    """LiteRT: the ``prefill_<N>``/``decode`` signatures of a ``.tflite`` (fixed-size KV cache, ``input_pos``,
    ``mask``), run by ``ai_edge_litert`` signature runners through ``deploykit.lm_litert.SignatureLM``.

    The prefill signature returns the caches only, no logits: the prompt's last position goes through
    the decode signature, which returns them. So ``prefill`` is the prefill call (every prompt token but
    the last, padded to N) plus one decode call (the last): a prompt of N + 1 tokens computes N + 1
    positions, as the other runtimes' single call does, with no padding."""

    kind = "litert"

    def __init__(self, model_path, threads: int = 1):
        import numpy as np

        from .litert import load_interpreter
        from .lm_litert import SignatureLM

        self.np = np
        self.lm = SignatureLM(load_interpreter(_require(model_path, "LiteRT model (.tflite)"),
                                               num_threads=_check_threads(threads)))

    def reset(self) -> None:
        # SignatureLM.start empties the cache itself (a dict of the zero buffers made at load: no
        # allocation, microseconds), so there is nothing to set up apart from it.
        pass

    def prefill(self, prompt_ids) -> int:
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
    peak = _status_mb("VmHWM")
    if not math.isnan(peak):
        return peak
    scale = 1024 if sys.platform != "darwin" else 1  # ru_maxrss: kilobytes on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6


def model_files(spec: dict) -> list[Path]:
    """The files a spec's runtime loads its model from (a folder's files for ``model_dir``; the course's
    Hugging Face folder for ``torch``)."""
    if spec.get("kind") == "torch":
        from .language_model import lm_path

        folders = [lm_path()]
    else:
        folders = [Path(spec[key]) for key in ("model_dir",) if key in spec]
    files = [Path(spec[key]) for key in ("prefill", "decode", "model", "pte") if key in spec]
    files += [f for folder in folders for f in sorted(folder.iterdir()) if f.is_file()]
    return [f.resolve() for f in files]


def mapped_files(spec: dict) -> dict[str, float]:
    """MB of each of the spec's model files this process has memory-mapped (``/proc/self/maps``, the sum of
    its mappings' sizes; a file not mapped is absent). A mapped file is read from the page cache on demand,
    but a runtime may still copy or repack the weights into its own memory (:func:`anonymous_mb` tells).
    Linux only (elsewhere: an empty dict)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return {}
    wanted = {str(f): f.name for f in model_files(spec)}
    mapped: dict[str, float] = {}
    for line in maps.read_text().splitlines():
        fields = line.split(None, 5)  # address perms offset dev inode [path]
        if len(fields) == 6 and fields[5] in wanted:  # the exact path: model.onnx is not model.onnx.data
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = wanted[fields[5]]
            mapped[name] = mapped.get(name, 0.0) + (end - start) / 1e6
    return dict(sorted(mapped.items()))


def anonymous_mb() -> float:
    """This process's anonymous resident memory (``RssAnon``: heap and private copies, not mapped files), MB;
    NaN where ``/proc/self/status`` has no such line."""
    return _status_mb("RssAnon")


def _status_mb(field: str) -> float:
    """One memory line of ``/proc/self/status`` (``VmHWM``, ``RssAnon``...), in MB; NaN where there is none."""
    status = Path("/proc/self/status")
    match = re.search(rf"^{field}:\s+(\d+) kB", status.read_text(), re.M) if status.exists() else None
    return int(match.group(1)) * 1024 / 1e6 if match else float("nan")  # kB (KiB) -> MB (10^6 bytes), the course's unit


def _stats(samples: list[float]) -> dict:
    from .bench import percentile

    return {"median": percentile(samples, 50), "p90": percentile(samples, 90), "n": len(samples),
            "samples": [round(s, 6) for s in samples]}


def measure(spec: dict, prompt_ids, *, threads=(1, 2), decode_steps: int = 32, warmup: int = 3,
            repeats: int = 10) -> dict:
    """Set-up, time to first token and decode speed of one runtime, in this process.

    For each thread count: a runner is made; ``warmup`` untimed then ``repeats`` timed generations
    are started, each timed in two parts: **set-up** is ``reset()`` (a fresh cache, generator or
    session state) and **time to first token** is ``prefill(prompt)`` (every prompt position, then
    the greedy choice). **Decode** is ``step()`` timed one token at a time, ``warmup`` untimed steps
    then ``decode_steps`` timed ones, after a fresh ``start``, ``repeats`` times over (every step
    sample kept). Median, 90th percentile and the samples of each; the positions the timed steps
    decode at; the peak resident memory of the process.
    """
    prompt_ids = _check_prompt(prompt_ids)
    if not isinstance(threads, (tuple, list)) or not threads:
        raise ValueError(f"measure expected threads as a non-empty tuple like (1, 2), got {threads!r}")
    for name, value, low in (("decode_steps", decode_steps, 1), ("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"measure expected {name} >= {low}, got {value!r}")
    rss_before = peak_rss_mb()
    results = {"spec": spec, "prompt_tokens": len(prompt_ids), "warmup": warmup, "repeats": repeats,
               "decode_steps": decode_steps, "batch": 1,
               "decode_positions": [len(prompt_ids) + warmup, len(prompt_ids) + warmup + decode_steps - 1],
               "by_threads": {}}
    for count in threads:
        anonymous = anonymous_mb()
        loading = time.perf_counter()
        runner = make_runner(spec, _check_threads(count))
        load_ms = (time.perf_counter() - loading) * 1e3
        if "first_load_ms" not in results:  # the first runner of this call: in a fresh process, the cold load
            results["first_load_ms"] = load_ms
            results["mapped_mb"] = mapped_files(spec)  # which model files the runtime mapped, and how much
            results["copied_mb"] = anonymous_mb() - anonymous  # private memory the load added (weights copied, packed)
        setup, first = [], []
        for i in range(warmup + repeats):
            start = time.perf_counter()
            runner.reset()
            prefill = time.perf_counter()
            runner.prefill(prompt_ids)
            end = time.perf_counter()
            if i >= warmup:
                setup.append((prefill - start) * 1e3)
                first.append((end - prefill) * 1e3)
        steps = []
        for _ in range(repeats):
            runner.start(prompt_ids)
            for i in range(warmup + decode_steps):
                start = time.perf_counter()
                runner.step()
                if i >= warmup:
                    steps.append((time.perf_counter() - start) * 1e3)
        step = _stats(steps)
        results["by_threads"][str(count)] = {"load_ms": _stats([load_ms]), "setup_ms": _stats(setup),
                                             "ttft_ms": _stats(first), "step_ms": step,
                                             "tokens_per_s": 1e3 / step["median"]}
        del runner
    results["rss_before_mb"] = rss_before
    results["peak_rss_mb"] = peak_rss_mb()
    results["pid"] = os.getpid()
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
    worker = _Worker()
    try:
        return worker.measure(spec, prompt_ids, timeout=timeout, **kwargs)
    finally:
        worker.close()


def _request(spec: dict, prompt_ids, kwargs: dict) -> str:
    return json.dumps({"spec": {k: str(v) if isinstance(v, Path) else v for k, v in spec.items()},
                       "prompt_ids": _check_prompt(prompt_ids), "kwargs": kwargs}) + "\n"


class _Worker:
    """A measuring process, ``python -m deploykit.lm_runtimes``: requests in, results out, one JSON line each.
    Its stdout is read by a thread (lines queued, so a wait can time out); its stderr goes to a file, read
    only to explain a failure, so that no pipe fills up."""

    def __init__(self, *, return_freed_memory: bool = True):
        import queue
        import threading

        if return_freed_memory:  # a collection of a large kernel takes a quarter of a second: once per series is enough
            _return_freed_memory()
        self.errors = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([sys.executable, "-m", "deploykit.lm_runtimes"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.errors, text=True)
        self.lines: queue.Queue = queue.Queue()

        def read():
            for line in self.process.stdout:
                self.lines.put(line)
            self.lines.put(None)  # the process closed its output: it has ended
            self.process.stdout.close()  # this thread's pipe: closed by it, never under its feet

        threading.Thread(target=read, daemon=True).start()

    def measure(self, spec: dict, prompt_ids, *, timeout: float = 300, **kwargs) -> dict:
        import queue

        request = _request(spec, prompt_ids, kwargs)
        deadline = time.monotonic() + timeout
        try:
            self.process.stdin.write(request)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it has exited: said below
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                line, why = None, f"no result within {timeout:g} s"
            else:
                why = None
            if line is not None and line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:  # it died halfway through its answer
                    line, why = None, "its answer was cut short"
            if line is None:
                if self.process.poll() is None:
                    self.process.kill()
                self.process.wait()  # ended, so its stderr is complete
                self.errors.seek(0)
                tail = "\n".join(self.errors.read().strip().splitlines()[-6:])
                self.close()
                raise RuntimeError(f"measuring {spec.get('kind')} in a subprocess failed "
                                   f"({why or f'exit {self.process.returncode}'}):\n{tail}")

    def close(self, kill: bool = False, *, skip_teardown: bool = False) -> None:
        """End the process: its input closed, so it leaves its loop and exits normally; with
        ``skip_teardown``, a SIGTERM once its answers are in (Python then exits without finalising its
        modules, 1.5 s for one that imported PyTorch and ``transformers``, 0.7 s with ExecuTorch's
        runtime); ``kill`` for one that hangs. Its pipes and its stderr file are closed after it has exited."""
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            elif skip_teardown:
                self.process.terminate()
            else:
                self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.errors):  # the reader thread closes stdout
            with contextlib.suppress(OSError, ValueError):
                stream.close()


# ----------------------------------------------------------------------------------------------
# Repeated, alternated rounds: one process per runtime and round


def spread(values) -> tuple[float, float, float]:
    """(median, lowest, highest) of one figure over the rounds."""
    import statistics

    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread expected at least one value")
    return statistics.median(values), min(values), max(values)


@dataclass
class RuntimeRounds:
    """One runtime measured in several rounds, each round a fresh process (:func:`measure`'s result)."""

    label: str
    rounds: tuple
    process_seconds: tuple
    reused: tuple = ()  # per round: whether the process was the one of the measurement just before

    def result(self, metric: str, threads: int = 1):
        """A ``deploykit.bench.RoundsResult`` (ms per call, one tuple of samples per round) of ``metric``:
        ``"setup"``, ``"ttft"`` or ``"step"``, at ``threads`` (the load is :attr:`cold_load_ms`)."""
        from .bench import RoundsResult

        if metric not in ("setup", "ttft", "step"):
            raise ValueError(f"result expected metric 'setup', 'ttft' or 'step', got {metric!r}")
        key = str(threads)
        if any(key not in r["by_threads"] for r in self.rounds):
            raise ValueError(f"{self.label}: not measured at {threads} thread(s) in every round")
        return RoundsResult(f"{self.label}, {metric}",
                            tuple(tuple(r["by_threads"][key][f"{metric}_ms"]["samples"]) for r in self.rounds),
                            warmup=self.rounds[0]["warmup"], threads=threads, batch=self.rounds[0].get("batch", 1))

    def ms(self, metric: str, threads: int = 1) -> tuple[float, float, float]:
        """(median of every sample, lowest round median, highest round median), ms."""
        measured = self.result(metric, threads)
        return (measured.median_ms, *measured.spread_ms)

    def tokens_per_s(self, threads: int = 1) -> tuple[float, float, float]:
        """Decode tokens/s, 1000 / the median step: (over every sample, slowest round, fastest round)."""
        median, low, high = self.ms("step", threads)
        return 1e3 / median, 1e3 / high, 1e3 / low

    def tail(self, metric: str, threads: int = 1) -> tuple[str, float]:
        """("p90", ms) over every round's samples, or ("max", ms) when they are too few for a p90."""
        return self.result(metric, threads).tail

    @property
    def peak_rss_mb(self) -> tuple[float, float, float]:
        return spread(r["peak_rss_mb"] for r in self.rounds)

    @property
    def cold_load_ms(self) -> tuple[float, float, float]:
        """Making the first runner of a measurement in a fresh process: the runtime's imports and the model's
        load, the model file already in the OS page cache. (median, lowest, highest) over the rounds whose
        process was new (:attr:`cold_loads` says how many); NaNs where no round records it."""
        fresh = self.cold_loads
        return spread(fresh) if fresh else (float("nan"),) * 3

    @property
    def cold_loads(self) -> list[float]:
        """``first_load_ms`` of every round measured in a new process (a reused one has imported already)."""
        return [r["first_load_ms"] for r, kept in zip(self.rounds, self.reused or (False,) * len(self.rounds))
                if not kept and "first_load_ms" in r]


def measure_rounds(specs: dict, prompt_ids, *, rounds: int = 3, timeout: float = 300, **kwargs) -> dict:
    """:func:`measure` for every spec of ``specs`` (label -> spec), in ``rounds`` rounds, each runtime in a
    process of its own: each round runs every runtime once, and the order alternates between rounds
    (``deploykit.bench.benchmark_rounds`` orders them: A B C, C B A, A B C ...), so that no runtime
    always runs first or always after the same neighbour. One measuring process runs at a time. A
    runtime measured twice in a row (the last of one round is the first of the next) stays in the
    process it has; every other measurement starts a fresh one. A process is ended as soon as its last
    answer is in, without waiting for its interpreter's teardown (:meth:`_Worker.close`), and this
    process's freed memory is returned to the system once, before the first. ``kwargs`` go to :func:`measure`.
    Returns label -> :class:`RuntimeRounds`, with the wall time of each measurement (a fresh
    process's start included, and the end of the process before it) and whether its process was reused."""
    from .bench import benchmark_rounds

    if not isinstance(specs, dict) or not specs:
        raise ValueError("measure_rounds expected a non-empty dict of label -> spec")
    for label, spec in specs.items():
        if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
            raise ValueError(f"measure_rounds: the spec of {label!r} needs a kind in {KINDS}, got {spec!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"measure_rounds expected rounds >= 1, got {rounds!r}")
    prompt_ids = _check_prompt(prompt_ids)
    collected = {label: [] for label in specs}
    reused = {label: [] for label in specs}
    current = {"label": None, "worker": None}

    def run(label):
        def call():
            if current["label"] != label:  # another runtime: its process ends before this one's starts
                if current["worker"] is not None:
                    current["worker"].close(skip_teardown=True)  # its answer is in: no need to wait for its exit
                current.update(label=label, worker=None)
                current["worker"] = _Worker(return_freed_memory=False)  # done once, before the first
                reused[label].append(False)
            else:
                reused[label].append(True)
            collected[label].append(current["worker"].measure(specs[label], prompt_ids, timeout=timeout, **kwargs))
        return call

    # One timed call per runtime and round, no warm-up: each call is a whole measurement.
    _return_freed_memory()  # this process's freed memory back to the system, once: its collection costs every call
    try:
        walls = benchmark_rounds({label: run(label) for label in specs}, rounds=rounds, warmup=0, repeats=1)
    finally:
        if current["worker"] is not None:
            current["worker"].close(skip_teardown=True)
    return {label: RuntimeRounds(label if isinstance(label, str) else ", ".join(map(str, label)), tuple(collected[label]),
                                 tuple(ms / 1e3 for ms in walls[label].samples), tuple(reused[label]))
            for label in specs}


def overlap_verdict(ranges: dict, *, lower_is_better: bool = True) -> tuple:
    """``(best, tied)``: the label with the best median of ``ranges`` (label -> (median, lowest,
    highest) over the rounds, as :func:`spread` gives), and the others whose range overlaps it. Only
    when ``tied`` is empty is ``best`` a winner: otherwise another round could crown another one
    (lecture 09's rule for alternated rounds)."""
    if not isinstance(ranges, dict) or len(ranges) < 2:
        raise ValueError("overlap_verdict expected at least two labels with (median, lowest, highest)")
    for label, value in ranges.items():
        if len(value) != 3 or not value[1] <= value[0] <= value[2]:
            raise ValueError(f"overlap_verdict: {label!r} needs (median, lowest, highest) with lowest <= median <= highest, got {value!r}")
    pick = min if lower_is_better else max
    best = pick(ranges, key=lambda label: ranges[label][0])
    _, low, high = ranges[best]
    tied = [label for label, (_, lo, hi) in ranges.items() if label != best and (lo <= high if lower_is_better else hi >= low)]
    return best, tied


# ----------------------------------------------------------------------------------------------
# What one decode step reads


#: LiteRT operators that read one row of a table per token: (op, input positions that are tables).
TFLITE_LOOKUPS = {"GATHER": {0}, "EMBEDDING_LOOKUP": {1}}


def _one_row(nbytes: int, shape) -> int:
    return nbytes // int(shape[0]) if len(shape) and int(shape[0]) > 0 else nbytes


def _tflite_step_bytes(path: Path, signature: str) -> int:
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    keys = {model.SignatureDefs(i).SignatureKey().decode(): model.SignatureDefs(i).SubgraphIndex()
            for i in range(model.SignatureDefsLength())}
    if signature not in keys:
        raise ValueError(f"step_read_bytes: no signature {signature!r} in {Path(path).name}; it has {sorted(keys)}")
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    graph = model.Subgraphs(keys[signature])
    uses: dict[int, list] = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "")
        for position in range(op.InputsLength()):
            if op.Inputs(position) >= 0:
                uses.setdefault(op.Inputs(position), []).append((name, position))
    by_buffer: dict[int, int] = {}
    for index, consumers in uses.items():
        tensor = graph.Tensors(index)
        buffer = model.Buffers(tensor.Buffer())
        nbytes = buffer.DataLength() or (buffer.Size() if buffer.Offset() > 1 else 0)
        if not nbytes:
            continue  # not a constant: an activation, an input or the cache
        quantization = tensor.Quantization()
        scales = 4 * quantization.ScaleLength() if quantization is not None else 0
        shape = tensor.ShapeAsNumpy().tolist() if tensor.ShapeLength() else []
        lookup = all(position in TFLITE_LOOKUPS.get(op, ()) for op, position in consumers)
        read = _one_row(nbytes, shape) + _one_row(scales, [shape[0]] if scales > 4 else []) if lookup else nbytes + scales
        by_buffer[tensor.Buffer()] = max(by_buffer.get(tensor.Buffer(), 0), read)  # a buffer two tensors share: once
    return sum(by_buffer.values())


def _torch_step_bytes(model) -> int:
    import torch

    by_storage: dict[int, int] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            nbytes = parameter.numel() * parameter.element_size()
            read = _one_row(nbytes, parameter.shape) if isinstance(module, torch.nn.Embedding) else nbytes
            key = parameter.data_ptr()  # a tied weight (embedding = lm_head) is one storage: counted once
            by_storage[key] = max(by_storage.get(key, 0), read)
    return sum(by_storage.values())


def step_read_bytes(source, *, signature: str = "decode") -> int:
    """Bytes of weights one decode step reads, counted from what the runtime runs.

    ``source``: an ONNX graph (``.onnx``: ``deploykit.bench.weight_bytes_read``, lecture 13's count), a
    ``.tflite`` (the ``signature`` that decodes) or a PyTorch module. Every weight is counted once,
    however many nodes or names share it (a tied embedding and output layer are one table); a table
    that is only looked up (an embedding's ``Gather``/``EMBEDDING_LOOKUP``) counts one row: a step
    looks up one token. The KV cache is not in it (it grows with the context):
    ``language_model.kv_cache_bytes`` gives it.
    """
    import torch

    if isinstance(source, torch.nn.Module):
        return _torch_step_bytes(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"step_read_bytes: no file {path}")
        if path.suffix == ".onnx":
            from .bench import weight_bytes_read

            return weight_bytes_read(path)[0]  # lecture 13's count, one source
        if path.suffix == ".tflite":
            return _tflite_step_bytes(path, signature)
        raise ValueError(f"step_read_bytes reads .onnx and .tflite files, got {path.name}")
    raise TypeError(f"step_read_bytes expected an .onnx/.tflite path or a torch.nn.Module, got {type(source).__name__}")


@dataclass
class Row:
    """One line of the lecture's table: a runtime at one precision, each figure (median, lowest round,
    highest round) over the rounds, and the bandwidth ceiling of its decode step."""

    runtime: str
    precision: str
    weight_mb: float
    kv_mb: float
    setup_ms: tuple
    ttft_ms: tuple
    ttft_tail: tuple
    tokens_per_s_1: tuple
    step_tail_1: tuple
    tokens_per_s_2: tuple
    peak_rss_mb: tuple
    ceiling_tokens_per_s: float
    measured: RuntimeRounds
    load_ms: tuple = (float("nan"),) * 3  # RuntimeRounds.cold_load_ms: imports + model load in a fresh process

    @property
    def read_mb(self) -> float:
        """MB one decode step reads: weights and KV cache."""
        return self.weight_mb + self.kv_mb

    @property
    def of_ceiling(self) -> float:
        """Median decode tokens/s at 1 thread as a fraction of the ceiling."""
        return self.tokens_per_s_1[0] / self.ceiling_tokens_per_s


def row(runtime: str, precision: str, measured: RuntimeRounds, *, weight_bytes: int, kv_bytes: int,
        bandwidth_gbs: float) -> Row:
    """A table row from :func:`measure_rounds`' result for one runtime; the ceiling is bandwidth / (the
    weight bytes a step reads + the KV-cache bytes it reads), ``language_model.decode_ceiling``."""
    from .language_model import decode_ceiling

    if not isinstance(measured, RuntimeRounds):
        raise TypeError(f"row expected a RuntimeRounds (measure_rounds' result for one runtime), got {type(measured).__name__}")
    if weight_bytes <= 0 or bandwidth_gbs <= 0 or kv_bytes < 0:
        raise ValueError(f"row expected positive weight_bytes and bandwidth_gbs and kv_bytes >= 0, got "
                         f"{weight_bytes}, {bandwidth_gbs}, {kv_bytes}")
    threads = set.intersection(*(set(r["by_threads"]) for r in measured.rounds))
    if "1" not in threads:
        raise ValueError("row expected a measurement at 1 thread (measure_rounds(..., threads=(1, 2)))")
    nan = (float("nan"),) * 3
    return Row(runtime, precision, weight_bytes / 1e6, kv_bytes / 1e6, measured.ms("setup"), measured.ms("ttft"),
               measured.tail("ttft"), measured.tokens_per_s(1), measured.tail("step"),
               measured.tokens_per_s(2) if "2" in threads else nan, measured.peak_rss_mb,
               decode_ceiling(bandwidth_gbs, weight_bytes, kv_bytes), measured, measured.cold_load_ms)


def _main() -> None:
    """``python -m deploykit.lm_runtimes``: one JSON request per line on stdin (``spec``, ``prompt_ids``,
    ``kwargs``), :func:`measure`'s result as one JSON line on stdout for each, until stdin ends."""
    for line in sys.stdin:
        if line.strip():
            request = json.loads(line)
            result = measure(request["spec"], request["prompt_ids"], **request.get("kwargs", {}))
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _main()
