"""Silence library log noise at its source, before the noisy libraries load.

Imported first by ``deploykit/__init__.py``. Each switch names the library it quiets; a learner
who wants the chatter back can set the variable before importing deploykit.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import warnings

# TensorFlow/LiteRT C++ logging (absl, glog): timestamps on stderr otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GLOG_minloglevel", "3")
# TensorFlow's oneDNN notice ("oneDNN custom operations are on ...") is printed before absl's
# log level applies; turning the custom ops off removes it and keeps numerics repeatable.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# litert-torch draws a rich progress display while converting.
os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
os.environ.setdefault("LITERT_TORCH_SILENCE_TORCH_LOGS", "y")
# Offline course: never let a library try a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Python loggers that print at INFO/WARNING on import or export.
for _name, _level in {
    "torch.utils._pytree": logging.ERROR,  # Enum register_constant deprecation from torchao
    "torch.onnx": logging.ERROR,  # "[torch.onnx] Obtain model graph ..." progress lines
    "torch._export": logging.ERROR,
    "torch.export": logging.ERROR,
    "onnxscript": logging.ERROR,
    "netron": logging.WARNING,  # "Serving 'x.onnx' at http://..."
    "absl": logging.ERROR,
}.items():
    logging.getLogger(_name).setLevel(_level)

# LiteRT's own C++ logger (``INFO: [accelerator_registry.cc:43] DestroyAccelerator: ...``) has no switch in
# ai-edge-litert 2.3: it ignores TF_CPP_MIN_LOG_LEVEL / GLOG_minloglevel, reads no environment variable for its
# level, and its LiteRtSetMinLoggerSeverity is not exported to Python. A CompiledModel that has run sets up a
# process-wide environment that is destroyed only after Python has finished (C++ static destructors), so its
# INFO lines land on the process's stderr at exit, where no `with` block can reach. At exit, stderr is passed
# through a filter that drops exactly those INFO lines (their ``[file.cc:line]`` form); warnings and errors
# still pass. DEPLOYKIT_KEEP_LITERT_EXIT_LOG=1 keeps them.
LITERT_INFO_LINE = r"^INFO: \[[A-Za-z0-9_]+\.cc:[0-9]+\] "


def _drop_litert_info_at_exit() -> None:
    """atexit: if LiteRT's CompiledModel was used, route file descriptor 2 through ``grep -v`` for the rest of
    the process's life (the filter exits when the process closes its stderr)."""
    if os.environ.get("DEPLOYKIT_KEEP_LITERT_EXIT_LOG") == "1" or "ai_edge_litert.compiled_model" not in sys.modules:
        return
    import shutil
    import subprocess

    grep = shutil.which("grep")
    if grep is None:   # no filter on this system: the lines stay
        return
    try:
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        original = os.dup(2)
        subprocess.Popen([grep, "-v", "-E", LITERT_INFO_LINE], stdin=read_end, stdout=original,
                         stderr=subprocess.DEVNULL, close_fds=True)
        os.close(read_end)
        os.close(original)
        _flush_c_streams()
        os.dup2(write_end, 2)
        os.close(write_end)
    except (OSError, ValueError):   # stderr already closed, or no processes left to start: leave stderr as it is
        pass


atexit.register(_drop_litert_info_at_exit)

# Deprecations the course teaches on purpose are shown in the lecture that teaches them
# (with warnings.catch_warnings); elsewhere they would repeat in every notebook.
warnings.filterwarnings("ignore", message=r".*register_constant\(\) on Enum subclasses.*")


@contextlib.contextmanager
def native_stderr_silenced():
    """Send C/C++ writes to stderr (file descriptor 2) to /dev/null inside the block.

    Some native libraries print with no switch to turn them off: the LiteRT interpreter prints
    ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` the first time it is built. Python
    exceptions still propagate; only the raw file descriptor is redirected.
    """
    with _descriptor_silenced(sys.stderr, 2):
        yield


@contextlib.contextmanager
def converter_output_silenced():
    """A converter's console output off inside the block: Python prints and warnings, and C/C++ writes to
    stderr (progress bars, log lines). Exceptions still propagate, so its errors are seen."""
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), native_stderr_silenced():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def native_stdout_silenced():
    """The same for C/C++ writes to stdout (file descriptor 1).

    ``import MNN`` prints the CPU's features (``The device supports: i8sdot:0, fp16:0, ...``) with
    ``printf``; the line differs between CPUs, so a compared notebook must not show it.
    """
    with _descriptor_silenced(sys.stdout, 1):
        yield


def _flush_c_streams() -> None:
    """Flush C stdio buffers (``fflush(NULL)``): a library's buffered ``printf`` must land while silenced."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to ask (unusual platforms): nothing buffered to lose
        pass


class CapturedText:
    """What a native library wrote while captured; ``.text`` is filled when the block ends."""

    text = ""


@contextlib.contextmanager
def native_stderr_captured():
    """Like :func:`native_stderr_silenced`, but keep what was written (``with ... as log:`` then ``log.text``).

    For the lines a library logs *instead of* putting them in its exception (LiteRT's accelerator
    errors), so a notebook can show the one line that names the cause.
    """
    import tempfile

    captured = CapturedText()
    with tempfile.TemporaryFile() as sink:
        try:
            with _descriptor_redirected(sys.stderr, 2, sink.fileno()):
                yield captured
        finally:
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")


@contextlib.contextmanager
def _descriptor_silenced(stream, fd: int):
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        with _descriptor_redirected(stream, fd, devnull):
            yield
    finally:
        os.close(devnull)


@contextlib.contextmanager
def _descriptor_redirected(stream, fd: int, target: int):
    """Point file descriptor ``fd`` at ``target`` inside the block, C buffers flushed on both sides."""
    stream.flush()
    _flush_c_streams()
    saved = os.dup(fd)
    try:
        os.dup2(target, fd)
        yield
    finally:
        _flush_c_streams()
        os.dup2(saved, fd)
        os.close(saved)
