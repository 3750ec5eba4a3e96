"""Lab 10 checks: a right answer passes; each wrong attempt gets its hint, not a pass."""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import deploykit as dk
from deploykit import language_model as lm
from deploykit.bench import BenchResult, RoundsResult
from deploykit.checks import lab10
from deploykit.lm_graphs import OUTPUTS


def outcome(capsys) -> str:
    return capsys.readouterr().out.strip()


def quantised(path, name: str, **settings):
    """A MatMulNBits copy of ``path`` with ``settings`` (bits, block_size, accuracy_level, is_symmetric), next to it
    (reused)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    out = path.with_name(f"{path.stem}_{name}.onnx")
    if not out.exists():
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), **{"is_symmetric": True, **settings})
        quantizer.process()
        quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return out


def edited(path, out, edit):
    """A copy of the graph at ``path`` changed by ``edit(model)``, saved as ``out``."""
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(out))
    return out


def scales_times(factor):
    """Multiply the scales of every MatMulNBits node: the same operators and settings, other weights."""
    def edit(model):
        scales = {node.input[2] for node in model.graph.node if node.op_type == "MatMulNBits"}
        for tensor in model.graph.initializer:
            if tensor.name in scales:
                changed = numpy_helper.to_array(tensor) * np.float32(factor)
                tensor.CopyFrom(numpy_helper.from_array(changed, tensor.name))
    return edit


def embedding_stored_twice(model):
    """The shared embedding stored a second time, for the Gather alone: the output layer reads one copy whole,
    the embedding lookup one row of the other."""
    shared = next(t for t in model.graph.initializer if len(t.dims) == 2 and t.dims[0] > 1000)
    copy = numpy_helper.from_array(numpy_helper.to_array(shared), "embedding_copy")
    model.graph.initializer.append(copy)
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == shared.name)
    gather.input[0] = "embedding_copy"


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """float32 and int4 (block 32) prefill/decode graphs (exported once, cached in artifacts/lab10/), and decode
    graphs that differ from the int4 one: in a setting (block 128, accuracy level 4, 8 bits), in their weights
    (same settings, scales changed), or in how the file stores them (the embedding twice)."""
    prefill, decode = lab10.reference_graphs()
    int4 = {"prefill": lab10.int4_graph(prefill), "decode": lab10.int4_graph(decode)}
    folder = tmp_path_factory.mktemp("lab10")
    other = {"block128": lab10.int4_graph(decode, 128),
             "accuracy4": quantised(decode, "int4_block32_accuracy4", block_size=32, accuracy_level=4),
             "bits8": quantised(decode, "int8_nbits_block32", bits=8, block_size=32),
             "asymmetric": quantised(decode, "int4_block32_asymmetric", block_size=32, is_symmetric=False),
             "scales": edited(int4["decode"], folder / "scales.onnx", scales_times(1.5)),
             "negated": edited(int4["decode"], folder / "negated.onnx", scales_times(-1.0))}
    twice = {"prefill": edited(int4["prefill"], folder / "twice_prefill.onnx", embedding_stored_twice),
             "decode": edited(int4["decode"], folder / "twice_decode.onnx", embedding_stored_twice)}
    return {"prefill": prefill, "decode": decode, "int4": int4, "other": other, "twice": twice}


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


def generate_iobinding(prompt, n_new, prefill, decode):
    # Right, and the usual way to avoid copying the cache: IOBinding, the outputs fed back as OrtValues.
    first = prefill.io_binding()
    first.bind_cpu_input("input_ids", prompt)
    for name in OUTPUTS:
        first.bind_output(name)
    prefill.run_with_iobinding(first)
    logits, keys, values = first.get_outputs()
    step = decode.io_binding()
    tokens = []
    for _ in range(n_new):
        tokens.append(int(logits.numpy()[0, -1].argmax()))
        if len(tokens) == n_new:
            break
        step.bind_cpu_input("input_ids", np.array([[tokens[-1]]], dtype=np.int64))
        step.bind_ortvalue_input("past_keys", keys)
        step.bind_ortvalue_input("past_values", values)
        for name in OUTPUTS:   # bound afresh: the cache grows by one position per step
            step.bind_output(name)
        decode.run_with_iobinding(step)
        logits, keys, values = step.get_outputs()
    return tokens


def generate_iobinding_stale_cache(prompt, n_new, prefill, decode):
    # IOBinding with the prompt's cache bound once and never rebound.
    logits, keys, values = prefill.run(None, {"input_ids": prompt})
    step = decode.io_binding()
    step.bind_cpu_input("past_keys", keys)
    step.bind_cpu_input("past_values", values)
    tokens = [int(logits[0, -1].argmax())]
    while len(tokens) < n_new:
        step.bind_cpu_input("input_ids", np.array([[tokens[-1]]], dtype=np.int64))
        for name in OUTPUTS:
            step.bind_output(name)
        decode.run_with_iobinding(step)
        tokens.append(int(step.copy_outputs_to_cpu()[0][0, -1].argmax()))
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


def generate_returns_pytorch_tokens(prompt, n_new, prefill, decode):
    # Runs the sessions the right way, then returns PyTorch's tokens (copied) instead of its own.
    generate(prompt, n_new, prefill, decode)
    return list(lab10.reference().tokens[:n_new])


def test_recording_sees_feeds_and_sessions(graphs):
    with lab10.recording() as seen:
        s = session(graphs["prefill"])
        s.run(None, {"input_ids": np.array([[1, 2, 3]])})
    assert seen.sessions_built == 1 and len(seen.calls) == 1 and seen.calls[0].outputs["present_keys"].shape[3] == 3
    assert ort.InferenceSession.__init__ is not None and len(seen.calls) == 1  # restored: nothing more recorded
    session(graphs["prefill"]).run(None, {"input_ids": np.array([[1, 2]])})
    assert len(seen.calls) == 1


def test_recording_sees_iobinding_runs(graphs):
    # A binding made before the recording and one made inside it: both runs are seen, feeds and outputs.
    s = session(graphs["prefill"])
    before = s.io_binding()
    before.bind_cpu_input("input_ids", np.array([[1, 2, 3]], dtype=np.int64))
    before.bind_output("present_keys")
    with lab10.recording() as seen:
        s.run_with_iobinding(before)
        inside = s.io_binding()
        inside.bind_cpu_input("input_ids", np.array([[4, 5]], dtype=np.int64))
        for name in OUTPUTS:
            inside.bind_output(name)
        s.run_with_iobinding(inside)
    assert [c.feed["input_ids"].tolist() for c in seen.calls] == [[[1, 2, 3]], [[4, 5]]]
    assert list(seen.calls[0].outputs) == ["present_keys"] and seen.calls[0].outputs["present_keys"].shape[3] == 3
    assert list(seen.calls[1].outputs) == OUTPUTS and seen.calls[1].outputs["present_values"].shape[3] == 2


def test_light_recording_keeps_the_first_call_only(graphs):
    s = session(graphs["prefill"])
    with lab10.recording(light=True) as seen:
        for n in (3, 4):
            s.run(None, {"input_ids": np.arange(n)[None]})
    assert seen.calls[0].kept and not seen.calls[1].kept and seen.calls[1].shapes["input_ids"] == (1, 4)


# --- Exercise 1

def test_export_right(graphs, capsys):
    assert lab10.check_export(graphs["prefill"], graphs["decode"])
    assert outcome(capsys).startswith("[PASS]")


def test_static_export_is_caught(tmp_path, capsys, graphs):
    # A graph with the example's length baked in: input_ids (1, 16).
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


def test_generation_with_iobinding_passes(graphs, capsys):
    # The cache bound as OrtValues, never copied through NumPy: a right loop, seen through run_with_iobinding.
    assert lab10.check_generation(generate_iobinding, graphs["prefill"], graphs["decode"])
    assert outcome(capsys).startswith("[PASS]")
    assert not lab10.check_generation(generate_iobinding_stale_cache, graphs["prefill"], graphs["decode"])
    assert "not the present_keys the previous call returned" in outcome(capsys)


def test_cache_returned_but_never_fed_back(graphs, capsys):
    # Right tokens (the loop is correct, only quadratic): caught by what it feeds the sessions.
    tokens = generate_cache_never_fed_back(lab10.reference().prompt_ids, lab10.N_NEW, session(graphs["prefill"]), None)
    assert tokens[:lab10.reference().decided] == lab10.reference().tokens[:lab10.reference().decided]
    assert not lab10.check_generation(generate_cache_never_fed_back, graphs["prefill"], graphs["decode"])
    text = outcome(capsys)
    assert "never fed back" in text and "quadratic" in text


def test_loop_on_sessions_of_its_own_is_caught(graphs, capsys):
    # generate ignores the sessions it is given and runs its own (built once, or at each call; or the decode
    # step only): the check would judge other graphs than the ones it passed.
    own = (session(graphs["prefill"]), session(graphs["decode"]))

    def generate_own_sessions(prompt, n_new, prefill, decode):
        return generate(prompt, n_new, *own)

    def generate_builds_sessions(prompt, n_new, prefill, decode):
        return generate(prompt, n_new, session(graphs["prefill"]), session(graphs["decode"]))

    def generate_own_decode(prompt, n_new, prefill, decode):
        return generate(prompt, n_new, prefill, own[1])

    for loop in (generate_own_sessions, generate_builds_sessions, generate_own_decode):
        assert not lab10.check_generation(loop, graphs["prefill"], graphs["decode"]), loop.__name__
        text = outcome(capsys)
        assert "a session the check did not pass in" in text and "never on sessions of its own" in text, loop.__name__


def test_stale_cache_and_wrong_tokens(graphs, capsys):
    assert not lab10.check_generation(generate_stale_cache, graphs["prefill"], graphs["decode"])
    assert "not the present_keys the previous call returned" in outcome(capsys)
    assert not lab10.check_generation(generate_off_by_one, graphs["prefill"], graphs["decode"])
    assert "not the argmax" in outcome(capsys)


# --- Exercise 3

def test_budget_right(graphs, capsys):
    ppl_fp32, ppl_int4 = (lab10.held_out_perplexity(graphs[k] if k else graphs["int4"]["prefill"]) for k in ("prefill", None))
    assert lab10.check_budget(graphs["int4"], graphs["prefill"], ppl_fp32, ppl_int4)
    assert outcome(capsys).startswith("[PASS]")
    measured = lab10.decode_pass(graphs["int4"]["prefill"], graphs["int4"]["decode"])
    assert measured.ratio < 1 + lab10.DECODE_PPL_RTOL / 4   # the same quantised weights: the same predictions


def test_float32_is_over_the_size_budget(graphs, capsys):
    ppl = lab10.held_out_perplexity(graphs["prefill"])
    assert not lab10.check_budget({"prefill": graphs["prefill"], "decode": graphs["decode"]}, graphs["prefill"], ppl, ppl)
    assert "over the" in outcome(capsys)


@pytest.fixture(scope="module")
def external(graphs, tmp_path_factory):
    """The float32 and int4 graphs saved with their weights as external data (a .onnx file of under 1 MB and a
    .data file beside it)."""
    folder = tmp_path_factory.mktemp("external")
    saved = {"fp32": {}, "int4": {}}
    for name in ("prefill", "decode"):
        for kind, source in (("fp32", graphs[name]), ("int4", graphs["int4"][name])):
            path = folder / f"{name}_{kind}.onnx"
            onnx.save_model(onnx.load(str(source)), str(path), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=path.name + ".data")
            saved[kind][name] = path
    return saved


def test_external_data_counts_toward_the_size(graphs, external, capsys):
    # float32 saved with save_as_external_data=True: tiny .onnx files, the weights in .data files beside them.
    fp32 = external["fp32"]
    for path in fp32.values():
        assert path.stat().st_size < 1e6 < lab10.SIZE_BUDGET_MB * 1e6 < lab10.shipped_bytes(path)
        assert lab10.graph_files(path) == [path.resolve(), path.resolve().with_name(path.name + ".data")]
        assert lab10.shipped_bytes(path) == sum(f.stat().st_size for f in lab10.graph_files(path))
    ppl = lab10.held_out_perplexity(graphs["prefill"])
    assert not lab10.check_budget(fp32, graphs["prefill"], ppl, ppl)
    text = outcome(capsys)
    assert "over the" in text and "external data" in text
    # int4 with external data: counted the same way, within the budget
    int4 = external["int4"]
    assert all(lab10.shipped_bytes(path) < lab10.SIZE_BUDGET_MB * 1e6 for path in int4.values())
    assert lab10.check_budget(int4, graphs["prefill"], ppl, lab10.held_out_perplexity(int4["prefill"]))
    assert outcome(capsys).startswith("[PASS]")


def test_external_data_left_behind(graphs, external, tmp_path, capsys):
    # The .onnx file copied without the data file it refers to.
    import shutil

    alone = {name: shutil.copy(path, tmp_path / path.name) for name, path in external["fp32"].items()}
    assert not lab10.check_budget(alone, graphs["prefill"], 45.0, 45.0)
    assert "not next to it" in outcome(capsys)


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


@pytest.mark.parametrize("variant, shown", [("block128", "block_size=128"), ("accuracy4", "accuracy_level=4"),
                                            ("bits8", "bits=8")])
def test_same_operators_other_settings_are_caught(graphs, capsys, variant, shown):
    # MatMulNBits on both graphs, but another block size, accuracy level or bit width on decode: operator
    # types alone cannot tell them apart, the quantisation's attributes do.
    deployed = {"prefill": graphs["int4"]["prefill"], "decode": graphs["other"][variant]}
    for check in (lambda: lab10.check_budget(deployed, graphs["prefill"], 45.0, 45.0),
                  lambda: lab10.check_parity(generate, deployed, 0, None)):
        assert not check()
        text = outcome(capsys)
        assert "not quantised the same way" in text and shown in text and "block_size=32" in text


def test_symmetric_and_asymmetric_are_caught(graphs, capsys):
    # Zero points on decode only (is_symmetric=False): the same operators and attributes, other stored weights.
    deployed = {"prefill": graphs["int4"]["prefill"], "decode": graphs["other"]["asymmetric"]}
    assert not lab10.check_budget(deployed, graphs["prefill"], 45.0, 45.0)
    text = outcome(capsys)
    assert "not quantised the same way" in text and "symmetric" in text and "with zero points" in text


def test_broken_decode_graph_fails_the_budget(graphs, capsys):
    # The same operators and settings on both graphs, but decode computes another model (its scales changed):
    # the prefill graph's perplexity is within budget, the decode graph's quality is measured too.
    deployed = {"prefill": graphs["int4"]["prefill"], "decode": graphs["other"]["scales"]}
    assert lab10._quantisation(deployed["prefill"]) == lab10._quantisation(deployed["decode"])
    ppl_fp32, ppl_int4 = lab10.held_out_perplexity(graphs["prefill"]), lab10.held_out_perplexity(deployed["prefill"])
    assert not lab10.check_budget(deployed, graphs["prefill"], ppl_fp32, ppl_int4)
    assert "the deployed decode graph, fed held-out text one token at a time" in outcome(capsys)


# --- Exercise 4

def parity_values(deployed, threads=1):
    ref = lab10.reference()
    tokens = generate(ref.prompt_ids, lab10.N_NEW, session(deployed["prefill"], threads),
                      session(deployed["decode"], threads))
    same = lab10._leading_same(tokens, ref.tokens)
    return same, (None if same >= ref.decided else float(ref.margins[same]))


def test_parity_right(graphs, capsys):
    same, margin = parity_values(graphs["int4"])
    assert lab10.check_parity(generate, graphs["int4"], same, margin)
    assert outcome(capsys).startswith("[PASS]")
    assert lab10.check_parity(generate_iobinding, graphs["int4"], same, margin)
    assert outcome(capsys).startswith("[PASS]")
    bound, _ = lab10.deployed_decided(graphs["int4"]["prefill"], graphs["int4"]["decode"])
    assert same >= min(bound, lab10.reference().decided)   # the bound the solution meets
    assert not lab10.check_parity(generate, graphs["int4"], same + 1, margin)
    assert "leading tokens" in outcome(capsys)
    if margin is not None:  # the int4 kernels of this CPU leave PyTorch's tokens somewhere
        assert not lab10.check_parity(generate, graphs["int4"], same, None)
        assert "margin_at_divergence" in outcome(capsys)
        assert not lab10.check_parity(generate, graphs["int4"], same, round(margin * 2, 3))
        assert "margins" in outcome(capsys)
    else:
        assert not lab10.check_parity(generate, graphs["int4"], same, 0.5)
        assert "None" in outcome(capsys)


def test_typed_full_parity_is_caught(graphs, capsys):
    # "Every token agrees" typed in, where the deployed loop leaves PyTorch's tokens (or the other way round).
    same, _ = parity_values(graphs["int4"])
    typed = lab10.N_NEW if same < lab10.N_NEW else 0
    assert not lab10.check_parity(generate, graphs["int4"], typed, None)
    assert "leading tokens" in outcome(capsys)


def test_loop_returning_pytorch_tokens_is_caught(graphs, capsys):
    assert not lab10.check_parity(generate_returns_pytorch_tokens, graphs["int4"], lab10.N_NEW, None)
    assert "not the argmax" in outcome(capsys)


def test_parity_on_sessions_of_its_own_is_caught(graphs, capsys):
    # generate runs float32 sessions of its own whatever it is given: float32's parity claimed for the int4
    # deployment.
    own = (session(graphs["prefill"]), session(graphs["decode"]))

    def generate_own_sessions(prompt, n_new, prefill, decode):
        return generate(prompt, n_new, *own)

    same, margin = parity_values({"prefill": graphs["prefill"], "decode": graphs["decode"]})
    assert not lab10.check_parity(generate_own_sessions, graphs["int4"], same, margin)
    assert "a session the check did not pass in" in outcome(capsys)


def test_float32_parity_has_no_divergence(graphs, capsys):
    deployed = {"prefill": graphs["prefill"], "decode": graphs["decode"]}
    assert not lab10.check_parity(generate, deployed, lab10.N_NEW, 0.5)
    assert "None" in outcome(capsys)
    assert lab10.check_parity(generate, deployed, lab10.N_NEW, None)


def test_broken_decode_graph_fails_parity(graphs, capsys):
    # A decode graph with the deployment's settings that computes another model: the learner's figures are
    # right for it, the check still refuses it.
    deployed = {"prefill": graphs["int4"]["prefill"], "decode": graphs["other"]["negated"]}
    same, margin = parity_values(deployed)
    assert not lab10.check_parity(generate, deployed, same, margin)
    assert "predicts it worse than the prefill graph" in outcome(capsys)


def test_parity_bound_on_its_own(graphs, monkeypatch, capsys):
    # Even where the held-out measurement were fooled, the tokens leave PyTorch's at a step the deployment decides.
    deployed = {"prefill": graphs["int4"]["prefill"], "decode": graphs["other"]["negated"]}
    same, margin = parity_values(deployed)
    bound, _ = lab10.deployed_decided(graphs["int4"]["prefill"], graphs["int4"]["decode"])
    assert same < min(bound, lab10.reference().decided), "the broken graph should leave PyTorch's tokens early"
    monkeypatch.setattr(lab10, "decode_pass", lambda *paths: lab10.DecodePass(10.0, 10.0, 0.0))
    assert not lab10.check_parity(generate, deployed, same, margin)
    assert "a step the deployment decides" in outcome(capsys)


# --- Exercise 5: the learner's timed function, and the recording of its timing

def cache_after(prefill_path, past=lab10.CONTEXT):
    ids = np.array([lab10.reference().held_ids[:past + 1]], dtype=np.int64)
    _, keys, values = session(prefill_path).run(None, {"input_ids": ids[:, :past]})
    return {"input_ids": ids[:, past:past + 1], "past_keys": keys, "past_values": values}, ids


def right_step(graphs, threads=1, graph="decode", past=lab10.CONTEXT):
    decode = session(graphs["int4"][graph] if graph in graphs["int4"] else graph, threads)
    feed, _ = cache_after(graphs["int4"]["prefill"], past)
    return lambda: decode.run(None, feed)


def iobinding_step(graphs):
    decode = session(graphs["int4"]["decode"])
    feed, _ = cache_after(graphs["int4"]["prefill"])
    binding = decode.io_binding()
    for name, value in feed.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for name in OUTPUTS:
        binding.bind_output(name)
    return lambda: decode.run_with_iobinding(binding)


def bench(fn, threads=1, warmup=5, repeats=30):
    return dk.benchmark(fn, warmup=warmup, repeats=repeats, threads=threads, batch=1)


def timed(fn, threads=1, warmup=5, repeats=30):
    """What the lab asks: dk.benchmark inside the recording; (result, recording)."""
    with lab10.recording(light=True) as calls:
        result = bench(fn, threads, warmup, repeats)
    return result, calls


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


def with_recording(fn, median=1.1, threads=1):
    """A recording of fn timed the way fixed() counts (5 warm-up, 30 runs), beside a fixed result."""
    _, calls = timed(fn)
    return fixed(median, threads), calls


def test_speed_right_structural(graphs, measured_here, capsys):
    step = right_step(graphs)
    assert lab10.check_speed(step, *with_recording(step), *speed_args(graphs))
    assert outcome(capsys).startswith("[PASS]")


def test_speed_with_iobinding_passes(graphs, measured_here, capsys):
    # The binding made outside the timed function, as it should be: the recording still sees the feed.
    step = iobinding_step(graphs)
    assert lab10.check_speed(step, *with_recording(step), *speed_args(graphs))
    assert outcome(capsys).startswith("[PASS]")


def test_timing_not_recorded(graphs, measured_here, capsys):
    step = right_step(graphs)
    assert not lab10.check_speed(step, fixed(1.1), None, *speed_args(graphs))
    assert "lab10.recording(light=True)" in outcome(capsys)
    assert not lab10.check_speed(step, fixed(1.1), "timed", *speed_args(graphs))
    assert "lab10.recording(light=True)" in outcome(capsys)


def test_session_built_inside_the_timed_call(graphs, measured_here, capsys):
    feed, _ = cache_after(graphs["int4"]["prefill"])
    step = lambda: session(graphs["int4"]["decode"]).run(None, feed)  # noqa: E731
    assert not lab10.check_speed(step, *with_recording(step), *speed_args(graphs))
    assert "InferenceSession was built while decode_step was timed" in outcome(capsys)


def test_prefill_timed_as_decode(graphs, measured_here, capsys):
    prefill = session(graphs["int4"]["prefill"])
    _, ids = cache_after(graphs["int4"]["prefill"])
    step = lambda: prefill.run(None, {"input_ids": ids[:, :lab10.CONTEXT]})  # noqa: E731
    assert not lab10.check_speed(step, *with_recording(step), *speed_args(graphs))
    assert "that is prefill" in outcome(capsys)


def test_wrong_thread_count(graphs, measured_here, capsys):
    step = right_step(graphs, threads=2)
    assert not lab10.check_speed(step, *with_recording(step), *speed_args(graphs))
    assert "intra_op_num_threads=2" in outcome(capsys)
    step = right_step(graphs)
    assert not lab10.check_speed(step, *with_recording(step, threads=2), *speed_args(graphs))
    assert "threads=2" in outcome(capsys)


def test_result_from_another_thread_count(graphs, measured_here, capsys):
    # decode_step is right, but the result was timed on a 2-thread session and labelled 1 thread.
    result, calls = timed(right_step(graphs, threads=2))
    assert not lab10.check_speed(right_step(graphs), result, calls, *speed_args(graphs))
    assert "intra_op_num_threads=2" in outcome(capsys)


def test_result_from_another_graph(graphs, measured_here, capsys):
    # decode_step is right, but the timing ran the float32 decode graph (or the int4 block-128 one).
    for graph in (graphs["decode"], graphs["other"]["block128"]):
        decode = session(graph)
        feed, _ = cache_after(graphs["int4"]["prefill"])
        result, calls = timed(lambda d=decode: d.run(None, feed))
        assert not lab10.check_speed(right_step(graphs), result, calls, *speed_args(graphs))
        assert "another graph than deployed['decode']" in outcome(capsys)


def test_result_from_another_context(graphs, measured_here, capsys):
    for past in (8, lab10.CONTEXT + 64):
        step = right_step(graphs, past=past)
        assert not lab10.check_speed(step, *with_recording(step), *speed_args(graphs))
        text = outcome(capsys)
        assert f"decodes after {past} tokens" in text and "lab10.CONTEXT" in text
        result, calls = timed(step)
        assert not lab10.check_speed(right_step(graphs), result, calls, *speed_args(graphs))
        assert f"decodes after {past} tokens" in outcome(capsys)


def test_result_from_another_run(graphs, measured_here, capsys):
    # A recording of one timing, the result of another (other counts), or of another session than decode_step's.
    step = right_step(graphs)
    _, calls = timed(step)
    assert not lab10.check_speed(step, bench(step, repeats=40), calls, *speed_args(graphs))
    assert "not a result from another run" in outcome(capsys)
    result, calls = timed(right_step(graphs))
    assert not lab10.check_speed(step, result, calls, *speed_args(graphs))
    assert "another session than the one decode_step runs" in outcome(capsys)


def test_copied_or_typed_numbers(graphs, measured_here, capsys):
    step = right_step(graphs)
    assert not lab10.check_speed(step, *with_recording(step, median=0.05), *speed_args(graphs))
    assert "never type or copy" in outcome(capsys)
    assert not lab10.check_speed(step, *with_recording(step, median=30.0), *speed_args(graphs))
    assert "never type or copy" in outcome(capsys)


def test_slow_deployment_misses_the_speed_budget(graphs, measured_here, capsys):
    measured_here["deployed"] = 2.5   # 2x float32's 1.25 ms
    step = right_step(graphs)
    assert not lab10.check_speed(step, *with_recording(step, median=2.6), *speed_args(graphs))
    assert "the float32 step here" in outcome(capsys)


def test_busy_machine_says_re_run(graphs, monkeypatch, capsys):
    busy = RoundsResult("x", ((1.0,) * 20, (1.0,) * 20, (4.0,) * 20), 3, 1, 1)   # round medians 4x apart
    monkeypatch.setattr(lab10, "measure_decode", lambda paths, past: {"deployed": busy, "float32": rounds_of(1.0)})
    step = right_step(graphs)
    assert not lab10.check_speed(step, *with_recording(step, median=20.0), *speed_args(graphs))
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
    assert not lab10.check_speed(None, None, None, graphs["int4"], graphs["prefill"], graphs["decode"])
    assert "Exercise 5" in outcome(capsys)
    assert not lab10.check_explanation("", fixed(1.0), graphs["int4"], None, None, None)
    assert "Exercise 6" in outcome(capsys)
    assert not lab10.check_generation(generate, None, None)
    assert "Exercise 1" in outcome(capsys)


# --- Exercise 6

@pytest.fixture(scope="module")
def bandwidth():
    """One thread's copy bandwidth, measured here as the lab asks (the check measures it again, and is asked
    first, so that a test which shrinks the CPU's cache does not shrink the check's arrays)."""
    lab10.measured_bandwidth()
    return dk.bench.stream_bandwidth("copy", lib="numpy")


@pytest.fixture
def small_cache(monkeypatch, bandwidth):
    """A CPU whose cache is smaller than what a step reads (1 MiB): the reason must then be memory."""
    monkeypatch.setattr(dk.bench, "l3_cache_bytes", lambda *args, **kwargs: 2**20)


def explanation_for(result, bandwidth, nbytes, ceiling, side=None, why=None):
    tokens_s = 1000 / result.median_ms
    side = side or ("below" if tokens_s < ceiling else "above")
    why = why or ("A model this small stays in the CPU's cache, so the fixed cost per node matters more than the "
                  "bytes it reads.")
    return (f"One decode step of the int4 graph runs at {tokens_s:.0f} tokens/s on one thread. "
            f"Memory delivers {bandwidth:.1f} GB/s here, so reading the {nbytes / 1e6:.1f} MB of weights and KV cache "
            f"once per token caps decoding at {ceiling:.0f} tokens/s, and the measurement is {side} that ceiling. "
            + why)


def copies_from_memory(result, bandwidth, nbytes, ceiling, why):
    """The solution's figures sentences ("... one thread copies from memory ..."), then ``why``."""
    tokens_s = 1000 / result.median_ms
    return (f"One decode step of the deployed graph runs at {tokens_s:.0f} tokens/s on one thread here. "
            f"Each step reads {nbytes / 1e6:.1f} MB, so at the {bandwidth:.1f} GB/s one thread copies from memory the "
            f"ceiling is {ceiling:.0f} tokens/s, and the measurement is {'below' if tokens_s < ceiling else 'above'} "
            "it. " + why)


def explanation_args(graphs, bandwidth):
    nbytes = lab10.step_bytes(graphs["int4"])
    return bandwidth, nbytes, bandwidth * 1e9 / nbytes


def result_at(ratio, ceiling):
    """A decode_result whose tokens/s is ``ratio`` times the ceiling."""
    return fixed(1000 / (ratio * ceiling))


def explain(graphs, text, result, bandwidth, nbytes, ceiling, deployed=None):
    return lab10.check_explanation(text, result, deployed or graphs["int4"], bandwidth, nbytes, ceiling)


def test_bytes_per_token_are_weights_and_cache(graphs):
    feed, _ = cache_after(graphs["int4"]["prefill"])
    cache = feed["past_keys"].nbytes + feed["past_values"].nbytes
    assert lab10.step_bytes(graphs["int4"]) == lab10.weight_bytes(graphs["int4"]["decode"]) + cache


def test_explanation_right(graphs, bandwidth, capsys):
    bandwidth, nbytes, ceiling = explanation_args(graphs, bandwidth)
    result = fixed(1.03)
    assert nbytes <= dk.bench.l3_cache_bytes()   # this step fits in the CPU's cache: the cache or fixed costs
    assert explain(graphs, explanation_for(result, bandwidth, nbytes, ceiling), result, bandwidth, nbytes, ceiling)
    assert outcome(capsys).startswith("[PASS]")


def test_explanation_at_and_above_the_ceiling(graphs, bandwidth, capsys):
    bandwidth, nbytes, ceiling = explanation_args(graphs, bandwidth)
    for ratio, side in ((1.04, "at"), (2.0, "above"), (1.04, "104% of")):
        result = result_at(ratio, ceiling)
        text = explanation_for(result, bandwidth, nbytes, ceiling, side=side)
        assert explain(graphs, text, result, bandwidth, nbytes, ceiling), side
        assert outcome(capsys).startswith("[PASS]")


def test_the_solution_explanation_passes_in_each_case(graphs, bandwidth, monkeypatch, capsys):
    # Exercise 6's solution code, run as the notebook runs it: below and above the ceiling, with what a step reads
    # fitting in the CPU's cache or not.
    import nbformat

    from test_grade import ROOT

    cell = next(c.source for c in nbformat.read(ROOT / "solutions" / f"{LAB10}.ipynb", as_version=4).cells
                if c.cell_type == "code" and "bandwidth_gbs = " in c.source and "# BEGIN SOLUTION" in c.source)
    code = cell.split("# BEGIN SOLUTION")[1].split("# END SOLUTION")[0]
    feed, _ = cache_after(graphs["int4"]["prefill"])
    monkeypatch.setattr(dk.bench, "stream_bandwidth", lambda *args, **kwargs: bandwidth)
    ceiling = bandwidth * 1e9 / lab10.step_bytes(graphs["int4"])
    for cache_bytes in (dk.bench.l3_cache_bytes(), 2**20):
        monkeypatch.setattr(dk.bench, "l3_cache_bytes", lambda *args, c=cache_bytes, **kwargs: c)
        for ratio in (0.3, 1.04, 2.0):
            names = {"dk": dk, "onnx": onnx, "lab10": lab10, "deployed": graphs["int4"], "keys": feed["past_keys"],
                     "values": feed["past_values"], "decode_result": result_at(ratio, ceiling)}
            exec(code, names)   # noqa: S102 - the solution's own cell
            given = ("explanation", "decode_result", "deployed", "bandwidth_gbs", "bytes_per_token", "ceiling_tokens_s")
            assert lab10.check_explanation(*(names[k] for k in given))
            assert outcome(capsys).startswith("[PASS]"), (cache_bytes, ratio, names["explanation"])


def test_explanation_with_copied_numbers_fails_after_a_rerun(graphs, bandwidth, capsys):
    bandwidth, nbytes, ceiling = explanation_args(graphs, bandwidth)
    text = explanation_for(fixed(1.03), bandwidth, nbytes, ceiling)
    assert not explain(graphs, text, fixed(1.31), bandwidth, nbytes, ceiling)
    assert "measured tokens/s" in outcome(capsys)
    bandwidth2, _, ceiling2 = explanation_args(graphs, bandwidth * 0.9)   # a re-run measures another bandwidth
    assert not explain(graphs, text, fixed(1.03), bandwidth2, nbytes, ceiling2)
    assert "ceiling" in outcome(capsys)
    assert not explain(graphs, "It is fast enough.", fixed(1.03), bandwidth, nbytes, ceiling)
    assert "three sentences" in outcome(capsys)


def test_typed_bandwidth_is_caught(graphs, bandwidth, capsys):
    # A phone's or a datasheet's figure typed in: the check measures one thread's copy bandwidth again.
    _, nbytes, _ = explanation_args(graphs, bandwidth)
    for typed in (4 * bandwidth, bandwidth / 4, 1000.0):
        ceiling = typed * 1e9 / nbytes
        assert not explain(graphs, explanation_for(fixed(1.03), typed, nbytes, ceiling), fixed(1.03), typed, nbytes,
                           ceiling), typed
        text = outcome(capsys)
        assert "measures it again" in text and 'stream_bandwidth("copy", lib="numpy")' in text
        assert f"{lab10.measured_bandwidth():.1f}" not in text   # the method, never the check's figure
    # within the stated factor of the check's own measurement: a run's variation, accepted
    within = bandwidth * 1.5
    ceiling = within * 1e9 / nbytes
    assert explain(graphs, explanation_for(fixed(1.03), within, nbytes, ceiling), fixed(1.03), within, nbytes, ceiling)
    assert outcome(capsys).startswith("[PASS]")


def test_typed_or_missing_verdict(graphs, bandwidth, capsys):
    bandwidth, nbytes, ceiling = explanation_args(graphs, bandwidth)
    result = result_at(2.0, ceiling)   # twice the ceiling: above it
    cases = {"below": "says the measurement is below", "below or above": "says the measurement is below",
             "at": "at the ceiling", f"{0.45:.0%} of": "percentage", "compared with": "does not say whether",
             "does not exceed": "negates its verdict", "not above": "negates its verdict",
             "never at or near": "negates its verdict"}
    for side, hint in cases.items():
        text = explanation_for(result, bandwidth, nbytes, ceiling, side=side)
        assert not explain(graphs, text, result, bandwidth, nbytes, ceiling), side
        assert hint in outcome(capsys), side
    # below the ceiling, said as "not below" (or "not under"): a negation reads true either way
    result = fixed(1.03)
    assert 1000 / result.median_ms < ceiling
    for side in ("not below", "not under", "isn't below"):
        text = explanation_for(result, bandwidth, nbytes, ceiling, side=side)
        assert not explain(graphs, text, result, bandwidth, nbytes, ceiling), side
        assert "negates its verdict" in outcome(capsys), side


def test_a_reason_that_does_not_fit(graphs, bandwidth, capsys):
    bandwidth, nbytes, ceiling = explanation_args(graphs, bandwidth)
    result = fixed(1.03)
    no_reason = "That is what the figures say, measured on this machine today."
    assert not explain(graphs, explanation_for(result, bandwidth, nbytes, ceiling, why=no_reason), result, bandwidth,
                       nbytes, ceiling)
    assert "no reason" in outcome(capsys)
    above = result_at(2.0, ceiling)   # fixed costs cannot explain a step faster than memory allows
    text = explanation_for(above, bandwidth, nbytes, ceiling, why="The fixed overhead of each operator call adds up.")
    assert not explain(graphs, text, above, bandwidth, nbytes, ceiling)
    assert "above the memory ceiling" in outcome(capsys)
    text = explanation_for(above, bandwidth, nbytes, ceiling, why="Every byte comes from memory, at every token here.")
    assert not explain(graphs, text, above, bandwidth, nbytes, ceiling)
    assert "contradicts" in outcome(capsys)


def test_the_figures_sentence_is_no_reason(graphs, bandwidth, capsys):
    # "one thread copies from memory" beside the bandwidth names memory and a copy, but gives no reason: an
    # irrelevant third sentence does not pass on its strength.
    bandwidth, nbytes, ceiling = explanation_args(graphs, bandwidth)
    result = fixed(1.03)
    irrelevant = "I ran this notebook on my own laptop this afternoon."
    text = copies_from_memory(result, bandwidth, nbytes, ceiling, irrelevant)
    assert not explain(graphs, text, result, bandwidth, nbytes, ceiling)
    assert "no reason" in outcome(capsys)
    text = copies_from_memory(result, bandwidth, nbytes, ceiling, "The weights fit in the CPU's cache, and each "
                              "operator call has a fixed cost.")
    assert explain(graphs, text, result, bandwidth, nbytes, ceiling)
    assert outcome(capsys).startswith("[PASS]")


def test_a_reason_against_the_cache_size(graphs, bandwidth, capsys):
    # What a step reads fits in this CPU's cache: memory at every token is not why the step is below the ceiling.
    bandwidth, nbytes, ceiling = explanation_args(graphs, bandwidth)
    result = fixed(1.03)
    for why, hint in (("Every byte streams from DRAM at every token, so the kernels wait on it.", "contradicts"),
                      ("The weights do not fit in the CPU's cache, so the kernels wait on them.", "contradicts"),
                      ("The kernels wait on the memory bandwidth at every token.", "does not fit this step")):
        assert not explain(graphs, explanation_for(result, bandwidth, nbytes, ceiling, why=why), result, bandwidth,
                           nbytes, ceiling), why
        text = outcome(capsys)
        assert hint in text and "dk.bench.l3_cache_bytes()" in text, why


def test_a_reason_when_the_step_does_not_fit_the_cache(graphs, bandwidth, small_cache, capsys):
    # On a CPU whose cache is smaller than what a step reads, every token streams it from memory.
    bandwidth, nbytes, ceiling = explanation_args(graphs, bandwidth)
    result = fixed(1.03)
    memory = "Every token streams the weights and the KV cache from memory, and each operator call adds its fixed cost."
    assert explain(graphs, explanation_for(result, bandwidth, nbytes, ceiling, why=memory), result, bandwidth, nbytes,
                   ceiling)
    assert outcome(capsys).startswith("[PASS]")
    at = result_at(1.04, ceiling)
    text = explanation_for(at, bandwidth, nbytes, ceiling, side="at", why="Each step waits for memory bandwidth, as "
                           "the formula assumes.")
    assert explain(graphs, text, at, bandwidth, nbytes, ceiling)
    assert outcome(capsys).startswith("[PASS]")
    for why, hint in (("The weights fit in the CPU's cache, so the fixed cost per node dominates.", "contradicts"),
                      ("The weights need not come from memory at every token, so fixed costs dominate.", "contradicts"),
                      (None, "does not fit this step")):   # None: the cache-and-fixed-cost reason
        assert not explain(graphs, explanation_for(result, bandwidth, nbytes, ceiling, why=why), result, bandwidth,
                           nbytes, ceiling), why
        assert hint in outcome(capsys), why


def test_explanation_wrong_bytes_or_ceiling(graphs, bandwidth, capsys):
    bandwidth, nbytes, ceiling = explanation_args(graphs, bandwidth)
    feed, _ = cache_after(graphs["int4"]["prefill"])
    cache = feed["past_keys"].nbytes + feed["past_values"].nbytes
    weights = lab10.weight_bytes(graphs["int4"]["decode"])
    file_size = graphs["int4"]["decode"].stat().st_size
    fp32 = lab10.weight_bytes(graphs["decode"]) + cache
    attempts = [(weights, "but not the key/value cache"), (fp32, "is not what one decode step")]
    if file_size > 1.03 * weights:  # a file larger than its weights (an export's stack traces, say); the course
        # strips those (dk.exports.strip_debug_info), so its int4 file is its weights to within 2 %
        attempts += [(file_size, "the file's size"), (file_size + cache, "the file's size")]
    for wrong, hint in attempts:
        text = explanation_for(fixed(1.03), bandwidth, wrong, bandwidth * 1e9 / wrong)
        assert not explain(graphs, text, fixed(1.03), bandwidth, wrong, bandwidth * 1e9 / wrong)
        text = outcome(capsys)
        assert hint in text and "lab10.CONTEXT" in text and "dk.bench.weight_bytes_read" in text
    assert not explain(graphs, explanation_for(fixed(1.03), bandwidth, nbytes, ceiling), fixed(1.03), bandwidth, nbytes,
                       bandwidth / nbytes)
    assert "x 1e9" in outcome(capsys)
    # the cache after another context than lab10.CONTEXT
    other = weights + 4 * cache
    assert not explain(graphs, explanation_for(fixed(1.03), bandwidth, other, bandwidth * 1e9 / other), fixed(1.03),
                       bandwidth, other, bandwidth * 1e9 / other)
    assert "lab10.CONTEXT" in outcome(capsys)


def test_a_table_stored_twice(graphs, bandwidth, capsys):
    # The embedding stored twice (the output layer's copy read whole, the lookup's one row per token): the
    # initializers' sum counts a table no step reads; the file holds it too.
    deployed = graphs["twice"]
    feed, _ = cache_after(graphs["int4"]["prefill"])
    cache = feed["past_keys"].nbytes + feed["past_values"].nbytes
    stored = lab10.weight_bytes(deployed["decode"]) + cache
    right = lab10.step_bytes(deployed)
    assert right < stored
    for nbytes, passes in ((right, True), (stored, False), (deployed["decode"].stat().st_size + cache, False)):
        ceiling = bandwidth * 1e9 / nbytes
        text = explanation_for(fixed(1.03), bandwidth, nbytes, ceiling)
        assert bool(explain(graphs, text, fixed(1.03), bandwidth, nbytes, ceiling, deployed)) is passes
        assert outcome(capsys).startswith("[PASS]" if passes else "[HINT]")
    ceiling = bandwidth * 1e9 / stored
    explain(graphs, explanation_for(fixed(1.03), bandwidth, stored, ceiling), fixed(1.03), bandwidth, stored, ceiling,
            deployed)
    assert "only Gather" in outcome(capsys)


@pytest.fixture(scope="module")
def gathered(graphs, tmp_path_factory):
    """An untied deployment (the embedding's lookup reads its own copy) quantised with the lookup too:
    MatMulNBitsQuantizer(..., op_types_to_quantize=("MatMul", "Gather")) turns that Gather into a
    GatherBlockQuantized of an int4 table."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    folder = tmp_path_factory.mktemp("gathered")
    deployed = {}
    for name in ("prefill", "decode"):
        untied = edited(graphs[name], folder / f"{name}_untied.onnx", embedding_stored_twice)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(untied)), block_size=32, is_symmetric=True,
                                         op_types_to_quantize=("MatMul", "Gather"))
        quantizer.process()
        deployed[name] = folder / f"{name}_untied_int4_gather.onnx"
        quantizer.model.save_model_to_file(str(deployed[name]), use_external_data_format=False)
    return deployed


def test_a_quantised_lookup_table_counts_one_row(graphs, gathered, bandwidth, capsys):
    # The int4 table GatherBlockQuantized looks up (its data and its scales): a step reads one row of each per token.
    # NEEDS deploykit/bench.py's weight_bytes_read to count GatherBlockQuantized's tables by row, as it counts
    # Gather's (and packed 4-bit tables as stored): lab10.step_bytes gets its weights from there.
    model = onnx.load(str(gathered["decode"]))
    lookup = [node for node in model.graph.node if node.op_type == "GatherBlockQuantized"]
    assert len(lookup) == 1, "the quantiser should have turned the untied lookup into GatherBlockQuantized"
    initializers = {t.name: t for t in model.graph.initializer}
    table = [initializers[name] for position, name in enumerate(lookup[0].input)
             if position != 1 and name in initializers]   # data, scales (and zero points): not the indices
    assert not any(t.name in node.input for t in table for node in model.graph.node
                   if node is not lookup[0])   # untied: only the lookup reads the table
    nbytes = [len(t.raw_data) if t.HasField("raw_data") else numpy_helper.to_array(t).nbytes for t in table]
    whole, rows = sum(nbytes), sum(b // t.dims[0] for b, t in zip(nbytes, table))
    feed, _ = cache_after(gathered["prefill"])
    cache = feed["past_keys"].nbytes + feed["past_values"].nbytes
    right = lab10.weight_bytes(gathered["decode"]) - whole + rows + cache
    assert lab10.step_bytes(gathered) == pytest.approx(right, rel=1e-6)
    for nbytes, passes in ((right, True), (right - rows + whole, False)):
        ceiling = bandwidth * 1e9 / nbytes
        text = explanation_for(fixed(1.03), bandwidth, nbytes, ceiling)
        assert bool(explain(graphs, text, fixed(1.03), bandwidth, nbytes, ceiling, gathered)) is passes
        shown = outcome(capsys)
        assert shown.startswith("[PASS]") if passes else "GatherBlockQuantized" in shown, shown


# --- The check times the graphs itself

@pytest.mark.measured
def test_a_correct_solution_passes_five_runs_in_a_row(graphs, capsys):
    # The same correct work gets the same grade: each run measures the learner's step afresh, as a re-run would.
    verdicts = []
    for _ in range(5):
        step = right_step(graphs)
        verdicts.append(bool(lab10.check_speed(step, *timed(step), *speed_args(graphs))))
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
    step = right_step(graphs)
    assert lab10.check_speed(step, *with_recording(step, median=2.6), *speed_args(graphs))
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
