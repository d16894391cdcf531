"""Distributions: Log.histogram, the Histograms callback, and the window that draws them."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from monitor import Histograms, Monitor
from monitor.distribution import BANDS, bands, evenly
from monitor.entries import encode
from monitor.log import Log
from monitor.records import Histogram
from monitor.windows import WINDOW_POINTS, Windows
from helpers.monitors import ListSink, monitor_with, small_model, train


def _entry(values, bins=30) -> dict:
    sink = ListSink()
    Log(sink).histogram("h", 1, values, bins=bins)
    return encode(sink.records[0])


@pytest.mark.parametrize("values", [torch.randn(10_000), torch.randint(-5, 5, (7, 9)), torch.full((4,), 2.5),
                                    torch.randn(100, dtype=torch.float64) * 1e6, torch.rand(3, 5).half()])
def test_counts_sum_to_numel_and_equal_numpy_on_the_same_edges(values):
    sink = ListSink()
    Log(sink).histogram("h", 1, values, bins=17)
    edges, counts, n = sink.records[0].values
    constant = values.min() == values.max()  # its one bin cut to a point: numpy's own bins around it
    expected, _ = np.histogram(values.double().numpy(), bins=17 if constant else edges.double().numpy())
    assert counts.tolist() == expected.tolist()
    assert sum(encode(sink.records[0])["counts"]) == n == values.numel()


def test_given_edges_count_as_numpy_does_and_values_outside_are_in_no_bin():
    values = torch.tensor([-1.0, 0.0, 0.1, 0.5, 0.9999, 1.0, 2.0, float("nan"), float("inf")])
    entry = _entry(values, bins=[0, 0.5, 1])
    expected, _ = np.histogram(values.numpy()[np.isfinite(values.numpy())], bins=[0, 0.5, 1])
    assert entry["counts"] == expected.tolist() == [2, 3] and entry["n"] == 9
    pooled = _entry([torch.zeros(3), torch.ones(2, 2)], bins=4)
    assert sum(pooled["counts"]) == pooled["n"] == 7


def test_empty_tensors_among_others_and_float32_ranges_near_the_limit_are_binned():
    pooled = _entry([torch.zeros(0), torch.tensor([1.0, 2.0]), torch.zeros(0, 3)], bins=2)
    assert pooled["counts"] == [1, 1] and pooled["n"] == 2
    huge = torch.tensor([-3e38, 0.0, 3e38])  # high - low overflows float32
    entry = _entry(huge, bins=4)
    assert all(np.isfinite(entry["edges"])) and sum(entry["counts"]) == 3
    assert entry["edges"][0] == pytest.approx(-3e38) and entry["edges"][-1] == pytest.approx(3e38)


def test_a_sparse_gradient_gives_the_values_it_stores():
    embedding = torch.nn.EmbeddingBag(10, 4, sparse=True)
    embedding(torch.tensor([[1, 1, 3]])).sum().backward()  # row 1 looked up twice: stored twice, uncoalesced
    monitor, sink = monitor_with(Histograms(of=("grads",), bins=5))
    monitor.train_start(embedding)
    monitor.after_backward()
    monitor.step_end()
    entry = encode(sink.of(Histogram)[0])
    rows = embedding.weight.grad.to_dense()[[1, 3]]
    expected, _ = np.histogram(rows.numpy(), bins=np.array(entry["edges"]))
    assert entry["n"] == 8 and sum(entry["counts"]) == 8 and entry["counts"] == expected.tolist()


def test_the_histograms_follow_the_model_s_parameters_as_they_are_at_each_step_logged():
    model = torch.nn.Sequential(torch.nn.LazyLinear(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(Histograms(every=1, of=("weights",)))
    monitor.train_start(model, optimizer)
    model(torch.ones(2, 4))  # the lazy layer takes its shape: 12 + 3 weights
    monitor.step_end()
    model.add_module("head", torch.nn.Linear(3, 2))  # 6 + 2 more
    monitor.step_end()
    model.load_state_dict({k: torch.full_like(v, 7.0) for k, v in model.state_dict().items()}, assign=True)
    monitor.step_end()
    entries = [encode(record) for record in sink.of(Histogram)]
    assert [entry["n"] for entry in entries] == [15, 23, 23]
    assert entries[-1]["edges"][0] <= 7.0 <= entries[-1]["edges"][-1] and entries[-1]["counts"] == [23]


@pytest.mark.parametrize("steps, logged", [(7, [1, 4, 7]), (8, [1, 4, 7, 8])])
def test_the_trained_weights_are_drawn_at_train_end_where_the_last_step_was_not_due(steps, logged):
    # 300 epochs, every=50: the bars ended at step 251's weights, never the model the run ended with.
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(Histograms(every=3))
    monitor.train_start(model, optimizer)
    for _ in range(steps):
        model(torch.ones(2, 3)).sum().backward()
        monitor.after_backward()
        optimizer.step()
        monitor.step_end()
    monitor.train_end()
    monitor.train_end()  # again, with no step since: nothing more
    assert [r.x for r in sink.of(Histogram) if r.window == "weight distribution"] == logged
    assert [r.x for r in sink.of(Histogram) if r.window == "grad distribution"] == [1, 4, 7]


def test_the_gradients_binned_are_those_the_optimizers_step_with_not_a_frozen_column_s_stale_ones():
    # A progressive network: the first task's column frozen, a new optimizer for the second's
    # column only: its gradients (340 values) were binned with the frozen one's, left from task 1.
    columns = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)])
    monitor, sink = monitor_with(Histograms(every=1, of=("grads",)))
    monitor.train_start(columns, torch.optim.SGD(columns[0].parameters(), lr=0.1))
    columns[0](torch.ones(2, 4)).sum().backward()
    monitor.after_backward()
    monitor.step_end()
    columns[0].requires_grad_(False)  # frozen; its .grad stays
    monitor.train_start(columns, torch.optim.SGD(columns[1].parameters(), lr=0.1))
    columns[1](torch.ones(2, 4)).sum().backward()
    monitor.after_backward()
    monitor.step_end()
    assert [encode(record)["n"] for record in sink.of(Histogram)] == [20, 10]


def test_a_gan_s_named_passes_bin_each_optimizer_s_gradients_in_windows_of_their_own():
    # The generator's loss flows back through the critic too: at G's pass D's .grad holds a
    # gradient no optimizer steps with, which was binned into one window with G's.
    nets = torch.nn.ModuleDict({"G": torch.nn.Linear(2, 4), "D": torch.nn.Linear(4, 1)})
    opt_g = torch.optim.Adam(nets["G"].parameters())
    opt_d = torch.optim.Adam(nets["D"].parameters())
    monitor, sink = monitor_with(Histograms(every=1, of=("grads",)))
    monitor.train_start(nets, {"G": opt_g, "D": opt_d})
    for _ in range(2):
        fake = nets["G"](torch.randn(8, 2))
        opt_d.zero_grad()
        nets["D"](fake.detach()).mean().backward()
        monitor.after_backward("D")
        opt_d.step()
        opt_g.zero_grad()
        (-nets["D"](fake).mean()).backward()
        monitor.after_backward("G")
        opt_g.step()
        monitor.step_end()
    assert [(r.window, encode(r)["n"]) for r in sink.of(Histogram)] == [
        ("grad distribution D", 5), ("grad distribution G", 12)] * 2


def test_a_layer_named_before_the_model_has_it_is_said_once_and_drawn_once_it_is_there(caplog):
    # A progressive network's third column: Histograms(layers=["cols.2"]) "failed" at train_start,
    # "called again at the next on_train_start", which never came.
    columns = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2)})
    monitor, sink = monitor_with(Histograms(every=1, of=("weights",), layers=["a", "b"]), raise_errors=True)
    with caplog.at_level("WARNING", logger="monitor"):
        monitor.train_start(columns, torch.optim.SGD(columns.parameters(), lr=0.1))
        monitor.step_end()
        columns["b"] = torch.nn.Linear(2, 3)  # the next task's column
        monitor.step_end()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "names ['b'], not modules of the model (yet): drawn once the model has them" in said[0]
    assert [record.window for record in sink.of(Histogram)] == ["weight distribution a", "weight distribution a",
                                                                 "weight distribution b"]


def test_gradients_under_a_grad_scaler_are_shown_unscaled():
    torch.manual_seed(0)
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    monitor, sink = monitor_with(Histograms(every=1, of=("grads",)))
    monitor.train_start(model, optimizer, scaler=scaler)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    scaler.scale(torch.nn.functional.cross_entropy(model(x), y)).backward()
    monitor.after_backward()  # before unscale_: the gradients are 1024 times too large here
    scaled = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    scaler.step(optimizer)
    scaler.update()
    monitor.step_end()
    edges, counts, n = sink.of(Histogram)[0].values
    assert edges[0].item() == pytest.approx(scaled.min().item() / 1024)
    assert edges[-1].item() == pytest.approx(scaled.max().item() / 1024)
    assert int(counts.sum()) == n == scaled.numel()


def test_bad_histogram_input_is_named():
    log = Log(ListSink())
    with pytest.raises(TypeError, match="values must be a tensor or a non-empty list of tensors, got str"):
        log.histogram("h", 1, "weights")
    with pytest.raises(ValueError, match="values must hold at least one number"):
        log.histogram("h", 1, torch.zeros(0))
    with pytest.raises(ValueError, match=r"bins must be a number of bins or at least two increasing finite edges, got \[1, 0\]"):
        log.histogram("h", 1, torch.zeros(3), bins=[1, 0])
    with pytest.raises(ValueError, match=r"increasing finite edges, got \[0, inf\]"):  # not strict JSON
        log.histogram("h", 1, torch.zeros(3), bins=[0, float("inf")])
    with pytest.raises(ValueError, match="bins must be an int >= 1, got 0|bins must be"):
        log.histogram("h", 1, torch.zeros(3), bins=0)
    with pytest.raises(ValueError, match="of must be a non-empty list of"):
        Histograms(of=("gradients",))


def test_no_accelerator_tensor_is_read_on_the_training_thread():
    """Meta tensors stand in for a GPU's: reading one raises, so only the worker may try."""
    model = small_model().to("meta")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(Histograms(every=1, layers=["0", "2"]))
    monitor.train_start(model, optimizer)
    monitor.log.histogram("activations", 1, torch.randn(8, 4, device="meta"))
    for _ in range(2):
        loss = model(torch.randn(8, 4, device="meta")).sum()
        loss.backward()
        monitor.after_backward()
        optimizer.step()
        monitor.step_end(loss=loss)
    records = sink.of(Histogram)
    assert {r.window for r in records} == {"activations", "grad distribution 0", "grad distribution 2",
                                           "weight distribution 0", "weight distribution 2"}
    assert all(t.device.type == "meta" for r in records for t in r.values[:2])


def test_percentile_bands_follow_the_histogram():
    entry = {"edges": [0.0, 1.0, 2.0, 3.0, 4.0], "counts": [25, 25, 25, 25], "n": 100, "x": 1}
    values = bands(entry)
    assert list(values) == list(BANDS)
    assert values["min"] == 0.0 and values["max"] == 4.0 and values["median"] == 2.0
    assert values["16%"] == pytest.approx(0.6348) and values["84%"] == pytest.approx(3.3652)  # 15.87%, 84.13%
    assert bands({"edges": [], "counts": [], "n": 3}) == {}
    # A share between two bins is taken at the next one's start, as TensorBoard takes it.
    assert bands({"edges": [1.0, 1.5, 1.9, 2.0], "counts": [1, 0, 1], "n": 2})["median"] == 1.9
    assert set(bands({"edges": [3.0, 3.0], "counts": [5], "n": 5}).values()) == {3.0}


def test_the_bands_of_a_single_step_are_drawn_as_points_then_as_lines():
    # One histogram logged: bands of one point each as lines drew nothing (the pane looked empty)
    from monitor.distribution import figure

    latest = {"edges": [0.0, 1.0, 2.0], "counts": [3, 1], "n": 4, "x": 1}
    one = {name: ([1], [value]) for name, value in bands(latest).items()}
    two = {name: ([1, 2], [value, value]) for name, value in bands(latest).items()}
    assert {t["mode"] for t in figure(one, latest, {})[0] if t["type"] == "scatter"} == {"markers"}
    assert {t["mode"] for t in figure(two, latest, {})[0] if t["type"] == "scatter"} == {"lines"}


def test_a_histogram_logged_again_at_its_step_takes_the_earlier_one_s_place():
    # A TensorBoard script resumed at step 20: the bands held x = 0, 10, 20, 20, 30.
    windows = Windows()
    for x in (0, 10, 20, 20, 30):
        windows.apply([{"k": "histogram", "win": "w", "x": x, "edges": [0.0, float(x + 1)], "counts": [2], "n": 2}])
    xs, ys = windows.by_name["w"].traces["max"].points()
    assert xs == [0, 10, 20, 30] and ys == [1.0, 11.0, 21.0, 31.0]


def test_uneven_bins_are_drawn_over_even_ones_and_even_bins_as_they_are():
    assert evenly([0, 1, 2], [3, 4], bins=2) == ([0, 1, 2], [3, 4])
    edges, counts = evenly([0.0, 1.0, 4.0], [2, 6], bins=4)
    assert edges == [0.0, 1.0, 2.0, 3.0, 4.0] and counts == [2, 2, 2, 2]
    edges, counts = evenly([0.0, 0.0, 1.0, 4.0, 4.0], [3, 2, 6, 1], bins=4)  # the extremes' bins, points
    assert edges == [0.0, 1.0, 2.0, 3.0, 4.0] and counts == [5, 2, 2, 3]
    assert evenly([3.0, 3.0], [100]) == ([2.985, 3.015], [100])  # a constant: a bar wide enough to be seen


def test_many_even_bins_are_drawn_merged():
    edges, counts = [i / 1000 for i in range(1001)], [1] * 1000
    drawn_edges, drawn_counts = evenly(edges, counts)
    assert len(drawn_counts) == 200 and sum(drawn_counts) == pytest.approx(1000)
    assert evenly(edges[:101], counts[:100]) == (edges[:101], counts[:100])  # up to 200: as they are


def test_a_long_run_keeps_the_distribution_window_within_budget():
    windows = Windows()
    edges = np.linspace(-3, 3, 31).tolist()
    rng = np.random.default_rng(0)
    for step in range(1, 200_001, 1):
        if step % 1000 == 1:
            counts = rng.integers(0, 50, 30).tolist()
        windows.apply([{"k": "histogram", "win": "w", "x": step, "edges": edges, "counts": counts,
                        "n": sum(counts)}])
    message = windows.by_name["w"].message("env")[1]
    assert len(json.dumps(message)) < 300_000
    bands_shown = [t for t in message["data"] if t["type"] == "scatter"]
    assert [t["name"] for t in bands_shown] == list(BANDS)
    assert sum(len(t["x"]) for t in bands_shown) <= WINDOW_POINTS
    assert all(t["x"][0] == 1 and t["x"][-1] == 200_000 for t in bands_shown)
    assert message["data"][-1]["y"] == counts  # the latest histogram


def test_the_histograms_callback_draws_bands_and_the_latest_histogram(visdom_server, tmp_path, read_window_raw):
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor([Histograms(every=2)], env="histograms", port=visdom_server.port, run_dir=tmp_path / "run")
    monitor.train_start(model, optimizer)
    train(monitor, model, optimizer, steps=5)
    assert monitor.flush()
    grads = read_window_raw(visdom_server, "histograms", "grad distribution")["content"]
    weights = read_window_raw(visdom_server, "histograms", "weight distribution")["content"]
    for shown in (grads, weights):
        lines = [t for t in shown["data"] if t["type"] == "scatter"]
        assert [t["name"] for t in lines] == list(BANDS) and lines[0]["x"] == [1, 3, 5]
        bars = shown["data"][-1]
        assert bars["type"] == "bar" and sum(bars["y"]) == sum(p.numel() for p in model.parameters())
    final = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert weights["data"][0]["y"][-1] == pytest.approx(final.min().item())
    assert weights["data"][-2]["y"][-1] == pytest.approx(final.max().item())
    monitor.close()


def test_the_steps_of_a_diverged_model_are_gaps_in_the_bands_and_the_histogram_says_why(
        visdom_server, tmp_path, read_window_raw):
    # All but one weight NaN: every band was drawn at that one value, a crisp line; all NaN: no point.
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor([Histograms(every=1)], env="diverged", port=visdom_server.port, run_dir=tmp_path / "run")
    monitor.train_start(model, optimizer)
    for step in range(1, 5):
        loss = model(torch.randn(2, 4)).pow(2).mean() * (math.nan if step >= 3 else 1.0)
        optimizer.zero_grad()
        loss.backward()
        monitor.after_backward()
        optimizer.step()
        monitor.step_end(loss=loss)
    assert monitor.flush()
    for window in ("grad distribution", "weight distribution"):
        shown = read_window_raw(visdom_server, "diverged", window)["content"]
        median = next(t for t in shown["data"] if t.get("name") == "median")
        assert median["x"] == [1, 2, 3, 4] and median["y"][2:] == [None, None] and None not in median["y"][:2]
        assert "not finite or outside the bins" in shown["layout"]["xaxis2"]["title"]
    monitor.close()


def test_complex_parameters_are_binned_by_their_real_and_imaginary_parts(recwarn):
    layer = torch.nn.Linear(2, 2, dtype=torch.complex64)
    monitor, sink = monitor_with(Histograms(every=1, of=("weights",)))
    monitor.train_start(layer)
    monitor.step_end()
    entry = encode(sink.of(Histogram)[0])
    parts = torch.view_as_real(torch.cat([layer.weight.detach().flatten(), layer.bias.detach()])).flatten()
    assert entry["n"] == sum(entry["counts"]) == 12
    assert entry["edges"][0] == pytest.approx(parts.min().item()) and entry["edges"][-1] == pytest.approx(parts.max().item())
    assert not [w for w in recwarn if "ComplexHalf" in str(w.message) or "imaginary" in str(w.message)]


def test_integer_and_boolean_parameters_are_not_weights():
    model = torch.nn.Linear(4, 2)
    model.seen = torch.nn.Parameter(torch.tensor(100_000), requires_grad=False)  # a counter kept in the state_dict
    model.mask = torch.nn.Parameter(torch.ones(3, dtype=torch.bool), requires_grad=False)
    monitor, sink = monitor_with(Histograms(every=1, of=("weights",)))
    monitor.train_start(model)
    monitor.step_end()
    entry = encode(sink.of(Histogram)[0])
    assert entry["n"] == 10 and entry["edges"][-1] < 1  # the 10 weights, binned over their own range


def test_given_edges_start_the_lowest_value_s_bin_at_it_and_end_the_highest_s_at_it_a_point_for_one_value():
    # TensorBoard draws its first bucket from the minimum and its last to the maximum: so do the bands
    from monitor.binning import binned

    edges = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0])
    cases = {(-0.5, 0.2, 1.5): ([-2.0, -0.5, 0.0, 1.0, 1.5, 3.0], [0, 1, 1, 1, 0]),
             (0.5, 0.5): ([-2.0, -1.0, 0.5, 0.5, 2.0, 3.0], [0, 0, 2, 0, 0]),  # one value: its bin a point
             (0.0, 1.0): ([-2.0, -1.0, 0.0, 1.0, 1.0, 3.0], [0, 0, 1, 1, 0]),  # the highest on an edge: a point
             (5.0,): ([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0], [0, 0, 0, 0, 0])}  # outside the edges: in no bin
    for values, (cut, counts) in cases.items():
        got, binned_counts, n = binned([torch.tensor(values)], edges)
        assert (got.tolist(), binned_counts.tolist(), n) == (cut, counts, len(values)), values


def test_a_cpu_bins_given_edges_as_numpy_does_in_float64_whatever_the_values_dtype():
    """A CPU compares float32 values with the edges rounded up to float32: the same bins as
    float64 comparisons, values on an edge, past the last, not finite and large integers included."""
    from monitor.binning import binned

    edges = torch.tensor([-1e-12, 0.1, 1 / 3, 0.7, 1.0], dtype=torch.float64)  # 0.1, 1/3: no float32 holds them
    third = torch.tensor(1 / 3, dtype=torch.float32)
    values = torch.cat([torch.tensor([0.1, 1.0, 1.5, -2.0, float("nan"), float("inf"), -float("inf"), 0.0]),
                        torch.nextafter(third, torch.tensor(0.0)).reshape(1), third.reshape(1),
                        torch.nextafter(third, torch.tensor(1.0)).reshape(1), torch.rand(1000)])
    for tensor in (values, values.half(), values.bfloat16(), values.double(),
                   torch.tensor([2**24, 2**24 + 1, 0], dtype=torch.int64)):
        wide = tensor.double().numpy()
        expected, _ = np.histogram(wide[np.isfinite(wide)], bins=edges.numpy())
        _, counts, n = binned([tensor], edges)
        assert counts.tolist() == expected.tolist() and n == tensor.numel(), tensor.dtype
    int_edges = torch.tensor([0.0, 2.0**24 + 0.5, 2.0**25], dtype=torch.float64)  # an int64 past float32's precision
    assert binned([torch.tensor([2**24, 2**24 + 1])], int_edges)[1].tolist() == [1, 1]
