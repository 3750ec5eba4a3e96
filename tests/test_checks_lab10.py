"""Lab 10 checks: a right answer passes; each wrong attempt gets its hint, not a pass."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import deploykit as dk
from deploykit import language_model as lm
from deploykit.bench import BenchResult, RoundsResult
from deploykit.checks import lab10


def outcome(capsys) -> str:
    return capsys.readouterr().out.strip()


@pytest.fixture(scope="module")
def graphs():
    """float32 and int4 (block 32) prefill/decode graphs (exported once, cached in artifacts/lab10/)."""
    prefill, decode = lab10.reference_graphs()
    return {"prefill": prefill, "decode": decode, "int4": {"prefill": lab10.int4_graph(prefill),
                                                           "decode": lab10.int4_graph(decode)}}


def session(path, threads=1):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# --- the learner's greedy loops, right and wrong

def generate(prompt, n_new, prefill, decode):
    logits, keys, values = prefill.run(None, {"input_ids": prompt})
    tokens = []
    for _ in range(n_new):
        tokens.append(int(logits[0, -1].argmax()))
        if len(tokens) == n_new:
            break
        logits, keys, values = decode.run(None, {"input_ids": np.array([[tokens[-1]]]), "past_keys": keys,
                                                 "past_values": values})
    return tokens


def generate_cache_never_fed_back(prompt, n_new, prefill, decode):
    # The cache comes back from every call, and is thrown away: the whole text is prefilled at each step.
    ids, tokens = prompt, []
    for _ in range(n_new):
        logits, keys, values = prefill.run(None, {"input_ids": ids})
        tokens.append(int(logits[0, -1].argmax()))
        ids = np.concatenate([ids, [[tokens[-1]]]], axis=1)
    return tokens


def generate_stale_cache(prompt, n_new, prefill, decode):
    # Decode is fed the prompt's cache at every step, never the one it returned.
    logits, keys, values = prefill.run(None, {"input_ids": prompt})
    tokens = []
    for _ in range(n_new):
        tokens.append(int(logits[0, -1].argmax()))
        logits, _, _ = decode.run(None, {"input_ids": np.array([[tokens[-1]]]), "past_keys": keys, "past_values": values})
    return tokens[:n_new]


def generate_off_by_one(prompt, n_new, prefill, decode):
    return generate(prompt, n_new + 1, prefill, decode)[1:]


def test_recording_sees_feeds_and_sessions(graphs):
    with lab10.recording() as seen:
        s = session(graphs["prefill"])
        s.run(None, {"input_ids": np.array([[1, 2, 3]])})
    assert seen.sessions_built == 1 and len(seen.calls) == 1 and seen.calls[0].outputs["present_keys"].shape[3] == 3
    assert ort.InferenceSession.__init__ is not None and len(seen.calls) == 1  # restored: nothing more recorded
    session(graphs["prefill"]).run(None, {"input_ids": np.array([[1, 2]])})
    assert len(seen.calls) == 1


# --- Exercise 1

def test_export_right(graphs, capsys):
    assert lab10.check_export(graphs["prefill"], graphs["decode"])
    assert outcome(capsys).startswith("[PASS]")


def test_static_export_is_caught(tmp_path, capsys, graphs):
    # A graph with the example's length baked in: input_ids (1, 16).
    import onnx

    model = onnx.load(str(graphs["prefill"]))
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, (1, 16)):
        dim.dim_value = value
    path = tmp_path / "static.onnx"
    onnx.save(model, str(path))
    assert not lab10.check_export(path, graphs["decode"])
    assert "torch.export.Dim" in outcome(capsys)


def test_export_swapped_or_quantised(graphs, capsys):
    assert not lab10.check_export(graphs["decode"], graphs["prefill"])
    assert "PREFILL_INPUTS" in outcome(capsys)
    assert not lab10.check_export(graphs["int4"]["prefill"], graphs["int4"]["decode"])
    assert "float32" in outcome(capsys)


# --- Exercise 2

def test_generation_right(graphs, capsys):
    assert lab10.check_generation(generate, graphs["prefill"], graphs["decode"])
    assert outcome(capsys).startswith("[PASS]")


def test_cache_returned_but_never_fed_back(graphs, capsys):
    # Right tokens (the loop is correct, only quadratic): caught by what it feeds the sessions.
    tokens = generate_cache_never_fed_back(lab10.reference().prompt_ids, lab10.N_NEW, session(graphs["prefill"]), None)
    assert tokens[:lab10.reference().decided] == lab10.reference().tokens[:lab10.reference().decided]
    assert not lab10.check_generation(generate_cache_never_fed_back, graphs["prefill"], graphs["decode"])
    text = outcome(capsys)
    assert "never fed back" in text and "quadratic" in text


def test_stale_cache_and_wrong_tokens(graphs, capsys):
    assert not lab10.check_generation(generate_stale_cache, graphs["prefill"], graphs["decode"])
    assert "not the present_keys the previous call returned" in outcome(capsys)
    assert not lab10.check_generation(generate_off_by_one, graphs["prefill"], graphs["decode"])
    assert "differ from PyTorch's" in outcome(capsys)


# --- Exercise 3

def test_budget_right(graphs, capsys):
    ppl_fp32, ppl_int4 = (lab10.held_out_perplexity(graphs[k] if k else graphs["int4"]["prefill"]) for k in ("prefill", None))
    assert lab10.check_budget(graphs["int4"], graphs["prefill"], ppl_fp32, ppl_int4)
    assert outcome(capsys).startswith("[PASS]")


def test_float32_is_over_the_size_budget(graphs, capsys):
    ppl = lab10.held_out_perplexity(graphs["prefill"])
    assert not lab10.check_budget({"prefill": graphs["prefill"], "decode": graphs["decode"]}, graphs["prefill"], ppl, ppl)
    assert "over the" in outcome(capsys)


def test_perplexity_on_training_text_is_caught(graphs, capsys):
    _, tokenizer = lab10._model()
    held = lab10.reference().held_ids
    train_ids = tokenizer(lm.training_text()[:40_000], verbose=False)["input_ids"][:len(held)]
    s = session(graphs["int4"]["prefill"])
    ppl_train = lm.perplexity(lambda x: s.run(["logits"], {"input_ids": x})[0], train_ids)
    ppl_fp32 = lab10.held_out_perplexity(graphs["prefill"])
    assert not lab10.check_budget(graphs["int4"], graphs["prefill"], ppl_fp32, ppl_train)
    text = outcome(capsys)
    assert "trained on" in text and "held_out_ids" in text


def test_copied_perplexity_is_caught(graphs, capsys):
    ppl_fp32 = lab10.held_out_perplexity(graphs["prefill"])
    assert not lab10.check_budget(graphs["int4"], graphs["prefill"], ppl_fp32, round(ppl_fp32 * 1.05, 2))
    assert "not this graph's perplexity" in outcome(capsys)


def test_mixed_precision_deployment_is_caught(graphs, capsys):
    mixed = {"prefill": graphs["int4"]["prefill"], "decode": graphs["decode"]}
    assert not lab10.check_budget(mixed, graphs["prefill"], 45.0, 45.0)
    assert "same precision" in outcome(capsys)


# --- Exercise 4

def test_parity_right(graphs, capsys):
    ref = lab10.reference()
    tokens = generate(ref.prompt_ids, lab10.N_NEW, session(graphs["int4"]["prefill"]), session(graphs["int4"]["decode"]))
    same = lab10._leading_same(tokens, ref.tokens)
    margin = None if same >= ref.decided else float(ref.margins[same])
    assert lab10.check_parity(generate, graphs["int4"], same, margin)
    assert outcome(capsys).startswith("[PASS]")
    if margin is not None:  # the int4 kernels of this CPU leave PyTorch's tokens somewhere
        assert not lab10.check_parity(generate, graphs["int4"], same + 1, margin)
        assert "leading tokens" in outcome(capsys)
        assert not lab10.check_parity(generate, graphs["int4"], same, None)
        assert "margin_at_divergence" in outcome(capsys)


def test_float32_parity_has_no_divergence(graphs, capsys):
    deployed = {"prefill": graphs["prefill"], "decode": graphs["decode"]}
    assert not lab10.check_parity(generate, deployed, lab10.N_NEW, 0.5)
    assert "None" in outcome(capsys)
    assert lab10.check_parity(generate, deployed, lab10.N_NEW, None)


# --- Exercise 5: the learner's timed function, seen by the recorder

def cache_after(prefill_path, past=lab10.CONTEXT):
    ids = np.array([lab10.reference().held_ids[:past + 1]], dtype=np.int64)
    _, keys, values = session(prefill_path).run(None, {"input_ids": ids[:, :past]})
    return {"input_ids": ids[:, past:past + 1], "past_keys": keys, "past_values": values}, ids


def right_step(graphs, threads=1):
    decode = session(graphs["int4"]["decode"], threads)
    feed, _ = cache_after(graphs["int4"]["prefill"])
    return lambda: decode.run(None, feed)


def bench(fn, threads=1):
    return dk.benchmark(fn, warmup=5, repeats=30, threads=threads, batch=1)


def fixed(median, threads=1, p90=None):
    return BenchResult("x", median, p90 or median * 1.1, median, median * 0.9, 5, 30, threads, 1, median)


def rounds_of(median):
    return RoundsResult("x", tuple((median,) * 20 for _ in range(3)), 3, 1, 1)


@pytest.fixture
def measured_here(request, monkeypatch):
    """Structural tests: the check's own timing gives fixed figures (deployed 1.0 ms, float32 1.25 ms)."""
    figures = {"deployed": 1.0, "float32": 1.25}
    monkeypatch.setattr(lab10, "measure_decode", lambda paths, past: {k: rounds_of(figures[k]) for k in paths})
    return figures


def speed_args(graphs):
    return graphs["int4"], graphs["prefill"], graphs["decode"]


def test_speed_right_structural(graphs, measured_here, capsys):
    assert lab10.check_speed(right_step(graphs), fixed(1.1), *speed_args(graphs))
    assert outcome(capsys).startswith("[PASS]")


def test_session_built_inside_the_timed_call(graphs, measured_here, capsys):
    feed, _ = cache_after(graphs["int4"]["prefill"])
    step = lambda: session(graphs["int4"]["decode"]).run(None, feed)  # noqa: E731
    assert not lab10.check_speed(step, fixed(1.1), *speed_args(graphs))
    assert "builds an InferenceSession" in outcome(capsys)


def test_prefill_timed_as_decode(graphs, measured_here, capsys):
    prefill = session(graphs["int4"]["prefill"])
    _, ids = cache_after(graphs["int4"]["prefill"])
    step = lambda: prefill.run(None, {"input_ids": ids[:, :lab10.CONTEXT]})  # noqa: E731
    assert not lab10.check_speed(step, fixed(1.1), *speed_args(graphs))
    assert "that is prefill" in outcome(capsys)


def test_wrong_thread_count(graphs, measured_here, capsys):
    assert not lab10.check_speed(right_step(graphs, threads=2), fixed(1.1), *speed_args(graphs))
    assert "intra_op_num_threads=2" in outcome(capsys)
    assert not lab10.check_speed(right_step(graphs), fixed(1.1, threads=2), *speed_args(graphs))
    assert "threads=2" in outcome(capsys)


def test_float32_graph_timed_instead_of_the_deployed_one(graphs, measured_here, capsys):
    decode = session(graphs["decode"])
    feed, _ = cache_after(graphs["prefill"])
    assert not lab10.check_speed(lambda: decode.run(None, feed), fixed(1.1), *speed_args(graphs))
    assert "another graph" in outcome(capsys)


def test_step_after_a_short_text(graphs, measured_here, capsys):
    decode = session(graphs["int4"]["decode"])
    feed, _ = cache_after(graphs["int4"]["prefill"], past=8)
    assert not lab10.check_speed(lambda: decode.run(None, feed), fixed(1.1), *speed_args(graphs))
    assert "CONTEXT" in outcome(capsys)


def test_copied_or_typed_numbers(graphs, measured_here, capsys):
    assert not lab10.check_speed(right_step(graphs), fixed(0.05), *speed_args(graphs))
    assert "never type or copy" in outcome(capsys)
    assert not lab10.check_speed(right_step(graphs), fixed(30.0), *speed_args(graphs))
    assert "never type or copy" in outcome(capsys)


def test_slow_deployment_misses_the_speed_budget(graphs, measured_here, capsys):
    measured_here["deployed"] = 2.5   # 2x float32's 1.25 ms
    assert not lab10.check_speed(right_step(graphs), fixed(2.6), *speed_args(graphs))
    assert "the float32 step here" in outcome(capsys)


def test_busy_machine_says_re_run(graphs, monkeypatch, capsys):
    busy = RoundsResult("x", ((1.0,) * 20, (1.0,) * 20, (4.0,) * 20), 3, 1, 1)   # round medians 4x apart
    monkeypatch.setattr(lab10, "measure_decode", lambda paths, past: {"deployed": busy, "float32": rounds_of(1.0)})
    assert not lab10.check_speed(right_step(graphs), fixed(20.0), *speed_args(graphs))
    text = outcome(capsys)
    assert "machine busy: re-run" in text and "never type" not in text


def test_blank_exercises_get_a_hint_naming_the_exercise(graphs, capsys):
    assert not lab10.check_export(None, None)
    assert "Exercise 1" in outcome(capsys)
    assert not lab10.check_generation(None, None, None)
    assert "Exercise 2" in outcome(capsys)
    assert not lab10.check_budget({}, graphs["prefill"], None, None)
    assert "Exercise 3" in outcome(capsys)
    assert not lab10.check_parity(generate, graphs["int4"], None, None)
    assert "Exercise 4" in outcome(capsys)
    assert not lab10.check_speed(None, None, graphs["int4"], graphs["prefill"], graphs["decode"])
    assert "Exercise 5" in outcome(capsys)
    assert not lab10.check_explanation("", fixed(1.0), graphs["int4"], None, None, None)
    assert "Exercise 6" in outcome(capsys)
    assert not lab10.check_generation(generate, None, None)
    assert "Exercise 1" in outcome(capsys)


# --- Exercise 6

def explanation_for(result, bandwidth, ceiling):
    return (f"One decode step of the int4 graph runs at {1000 / result.median_ms:.0f} tokens/s on one thread. "
            f"Memory delivers {bandwidth:.1f} GB/s here, so reading every weight once per token caps decoding at "
            f"{ceiling:.0f} tokens/s. A model this small stays in the cache, so the fixed cost per node matters more "
            "than the bytes it reads.")


def explanation_args(graphs, bandwidth=12.0):
    nbytes = lab10.weight_bytes(graphs["int4"]["decode"])
    return bandwidth, nbytes, bandwidth * 1e9 / nbytes


def test_explanation_right(graphs, capsys):
    bandwidth, nbytes, ceiling = explanation_args(graphs)
    result = fixed(1.03)
    assert lab10.check_explanation(explanation_for(result, bandwidth, ceiling), result, graphs["int4"], bandwidth,
                                   nbytes, ceiling)
    assert outcome(capsys).startswith("[PASS]")


def test_explanation_with_copied_numbers_fails_after_a_rerun(graphs, capsys):
    bandwidth, nbytes, ceiling = explanation_args(graphs)
    text = explanation_for(fixed(1.03), bandwidth, ceiling)
    assert not lab10.check_explanation(text, fixed(1.31), graphs["int4"], bandwidth, nbytes, ceiling)
    assert "measured tokens/s" in outcome(capsys)
    bandwidth2, _, ceiling2 = explanation_args(graphs, bandwidth=9.0)
    assert not lab10.check_explanation(text, fixed(1.03), graphs["int4"], bandwidth2, nbytes, ceiling2)
    assert "ceiling" in outcome(capsys)
    assert not lab10.check_explanation("It is fast enough.", fixed(1.03), graphs["int4"], bandwidth, nbytes, ceiling)
    assert "three sentences" in outcome(capsys)


def test_explanation_wrong_bytes_or_ceiling(graphs, capsys):
    bandwidth, nbytes, ceiling = explanation_args(graphs)
    fp32_bytes = lab10.weight_bytes(graphs["decode"])
    text = explanation_for(fixed(1.03), bandwidth, bandwidth * 1e9 / fp32_bytes)
    assert not lab10.check_explanation(text, fixed(1.03), graphs["int4"], bandwidth, fp32_bytes,
                                       bandwidth * 1e9 / fp32_bytes)
    assert "initializers" in outcome(capsys)
    assert not lab10.check_explanation(text, fixed(1.03), graphs["int4"], bandwidth, nbytes, bandwidth / nbytes)
    assert "x 1e9" in outcome(capsys)


# --- The check times the graphs itself

@pytest.mark.measured
def test_a_correct_solution_passes_five_runs_in_a_row(graphs, capsys):
    # The same correct work gets the same grade: each run measures the learner's step afresh, as a re-run would.
    verdicts = []
    for _ in range(5):
        step = right_step(graphs)
        verdicts.append(bool(lab10.check_speed(step, bench(step), *speed_args(graphs))))
    assert verdicts == [True] * 5, outcome(capsys)


@pytest.mark.measured
def test_prefill_timing_is_far_from_a_decode_step(graphs):
    # Why prefill is not a decode step: on any CPU, a prefill of CONTEXT tokens takes many decode steps.
    prefill = session(graphs["int4"]["prefill"])
    _, ids = cache_after(graphs["int4"]["prefill"])
    prefill_ms = bench(lambda: prefill.run(None, {"input_ids": ids[:, :lab10.CONTEXT]})).median_ms
    decode_ms = bench(right_step(graphs)).median_ms
    assert prefill_ms > 4 * decode_ms


def test_speed_budget_is_not_judged_on_an_emulated_cpu(graphs, measured_here, monkeypatch, capsys):
    # make test-portable declares DEPLOYKIT_TIME_SCALE: emulation, not the kernels, sets the ratio there.
    measured_here["deployed"] = 2.5
    monkeypatch.setenv("DEPLOYKIT_TIME_SCALE", "50")
    assert lab10.check_speed(right_step(graphs), fixed(2.6), *speed_args(graphs))
    assert outcome(capsys).startswith("[PASS]")


# --- The same notebook gets the same grade twice (tools/grade.py runs each submission afresh)

LAB10 = "lab10_language_model_budget"


@pytest.mark.measured
def test_lab10_sample_submissions_get_the_same_grades_twice(tmp_path, graphs):
    import csv

    import nbformat
    from test_grade import ROOT, filled_lab, load_grader

    grader = load_grader()
    handed_out = nbformat.read(ROOT / "labs" / f"{LAB10}.ipynb", as_version=4)
    stubs = [i for i, cell in enumerate(handed_out.cells) if cell.cell_type == "code" and "# YOUR CODE HERE" in cell.source]
    incomplete = filled_lab(LAB10)   # Exercises 4 to 6 left blank
    for index in stubs[3:]:
        incomplete.cells[index].source = handed_out.cells[index].source
    folder = tmp_path / "submissions"
    for learner, nb in {"ada": filled_lab(LAB10), "ben": incomplete, "cat": handed_out}.items():
        (folder / learner).mkdir(parents=True)
        nbformat.write(nb, folder / learner / f"{LAB10}.ipynb")

    def table(out):
        assert grader.main([str(folder), "--lab", "lab10", "--out", str(out), "--cell-timeout", "300",
                            "--timeout", "900"]) == 0
        with (out / "lab10.csv").open(encoding="utf-8") as handle:
            return [{key: value for key, value in row.items() if key != "seconds"} for row in csv.DictReader(handle)]

    first, second = table(tmp_path / "first"), table(tmp_path / "second")
    assert first == second
    scores = {row["learner"]: row["score"] for row in first}
    assert scores["ada"] == "1.00" and scores["ben"] == "0.50" and scores["cat"] == "0.00", first
