"""deploykit._quiet drops LiteRT's INFO lines written to stderr after Python has finished (C++ static
destructors of a CompiledModel's process-wide environment), and nothing else."""
import os
import subprocess
import sys
import textwrap

LITERT_INFO = "INFO: [accelerator_registry.cc:43] DestroyAccelerator: ptr=0x1, name=CpuAccelerator"
OTHER_LINES = ("WARNING: [npu_registry.cc:34] NPU accelerator could not be loaded",
               "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", "a plain line at exit")


def _exit_stderr(pretend_litert: bool, env_extra: dict | None = None) -> str:
    """stderr of a Python process that writes LiteRT's exit lines to file descriptor 2 after deploykit's
    handler has run (an atexit handler registered before deploykit's runs after it)."""
    lines = "\n".join((LITERT_INFO, *OTHER_LINES)) + "\n"
    script = textwrap.dedent(f"""
        import atexit, os, sys, types
        atexit.register(lambda: os.write(2, {lines!r}.encode()))
        import deploykit._quiet
        if {pretend_litert!r}:
            sys.modules["ai_edge_litert.compiled_model"] = types.ModuleType("ai_edge_litert.compiled_model")
    """)
    env = {key: value for key, value in os.environ.items() if key != "DEPLOYKIT_KEEP_LITERT_EXIT_LOG"}
    env.update(env_extra or {})
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_litert_info_lines_at_exit_are_dropped_and_the_rest_kept():
    err = _exit_stderr(pretend_litert=True)
    assert "DestroyAccelerator" not in err
    for line in OTHER_LINES:
        assert line in err


def test_nothing_is_filtered_without_litert_or_when_asked_to_keep():
    assert LITERT_INFO in _exit_stderr(pretend_litert=False)
    assert LITERT_INFO in _exit_stderr(pretend_litert=True, env_extra={"DEPLOYKIT_KEEP_LITERT_EXIT_LOG": "1"})


def test_a_compiled_model_run_leaves_no_destroy_accelerator_lines():
    """The real case (lecture 10, section 6): a CompiledModel that has run logs DestroyAccelerator at exit."""
    script = textwrap.dedent("""
        import gc
        import deploykit as dk
        from ai_edge_litert.compiled_model import CompiledModel, CpuOptions, HardwareAccelerator, Options
        from deploykit.litert import digits_tflite
        with dk.native_stderr_silenced():
            model = CompiledModel.from_file(str(digits_tflite()), options=Options(
                HardwareAccelerator.CPU, cpu_options=CpuOptions(num_threads=1)))
            inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
            model.run_by_index(0, inputs, outputs)
            model.close()
            del model, inputs, outputs
            gc.collect()
        print("ran")
    """)
    env = {key: value for key, value in os.environ.items() if key != "DEPLOYKIT_KEEP_LITERT_EXIT_LOG"}
    kept = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**env, "DEPLOYKIT_KEEP_LITERT_EXIT_LOG": "1"})
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert kept.returncode == 0 and quiet.returncode == 0, quiet.stderr[-2000:]
    assert "ran" in quiet.stdout
    assert "DestroyAccelerator" in kept.stderr, "LiteRT no longer logs at exit: the filter may be unnecessary"
    assert "DestroyAccelerator" not in quiet.stderr
