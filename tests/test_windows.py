"""Windows: what a pane shows is exact up to its point budget, then thinned but true to its extremes."""
from __future__ import annotations

import json
import math
import random

import pytest

from monitor.windows import WINDOW_POINTS, Trace, Window, Windows, float32_digits


def test_a_trace_is_exact_up_to_its_budget():
    trace = Trace(1000)
    for step in range(1, 1001):
        trace.add(step, step / 7)
    assert trace.points() == (list(range(1, 1001)), [step / 7 for step in range(1, 1001)])


def test_a_long_trace_stays_within_its_budget_and_keeps_its_extremes_in_order():
    random.seed(0)
    trace = Trace(1000)
    values = [random.gauss(0, 1) for _ in range(200_000)]
    values[12_345], values[99_999] = 50.0, -50.0
    for step, value in enumerate(values, 1):
        trace.add(step, value)
        if step % 997 == 0:
            assert len(trace) <= 1000
    xs, ys = trace.points()
    assert len(xs) == len(trace) <= 1000
    assert len(xs) >= 250  # thinning leaves a usable curve, not a handful of points
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    assert (12_346, 50.0) in zip(xs, ys) and (100_000, -50.0) in zip(xs, ys)
    assert (xs[0], xs[-1]) == (1, 200_000) and ys[-1] == values[-1]  # the whole run, ending at the latest value


def test_a_thinned_trace_keeps_a_gap_where_a_value_was_not_finite():
    trace = Trace(10)
    for step in range(1, 101):
        trace.add(step, math.nan if step == 42 else 1.0)
    xs, ys = trace.points()
    assert len(xs) <= 10 and ys.count(None) == 1 and trace.nonfinite == 1


def test_a_trace_holds_bounded_memory_however_long_it_gets():
    trace = Trace(100)
    for step in range(100_000):
        trace.add(step, float(step % 13))
    assert sum(len(bucket) for bucket in trace.buckets) <= 100
    assert len(trace.partial.points()) <= 3  # the bucket being filled is a summary, not a list


def test_a_line_window_is_sent_whole_with_every_trace_and_counts_its_gaps():
    window = Window("loss", 1000)
    window.apply({"k": "layout", "win": "loss", "opts": {"title": "training loss", "ytype": "log"}})
    window.apply({"k": "points", "win": "loss", "x": 1, "y": {"train": 1.0, "validation": math.inf}})
    window.apply({"k": "points", "win": "loss", "x": 2, "y": {"train": 0.5}})
    endpoint, message = window.message("mnist")
    assert endpoint == "events" and message["win"] == "loss" and message["eid"] == "mnist"
    assert [(t["name"], t["x"], t["y"]) for t in message["data"]] == [
        ("train", [1, 2], [1.0, 0.5]), ("validation", [1], [None])]
    assert message["opts"]["title"] == "training loss"  # stable: compare views match windows by title
    assert message["layout"]["legend"]["title"]["text"] == "1 non-finite shown as gaps"
    assert message["layout"]["yaxis"]["type"] == "log"


def test_a_curve_with_one_finite_point_is_a_dot_and_a_constant_is_scaled_about_its_value():
    window = Window("accuracy", 1000)
    window.apply({"k": "points", "win": "accuracy", "x": 1, "y": {"train": math.nan, "test": 0.9}})
    window.apply({"k": "points", "win": "accuracy", "x": 2, "y": {"train": 0.5}})  # one after a NaN
    modes = {t["name"]: t["mode"] for t in window.message("e")[1]["data"]}
    assert modes == {"train": "lines+markers", "test": "lines+markers"}
    window.apply({"k": "points", "win": "accuracy", "x": 3, "y": {"train": 0.5, "test": 0.5}})
    _, message = window.message("e")
    assert {t["name"]: t["mode"] for t in message["data"]} == {"train": "lines", "test": "lines"}
    assert "range" not in message["layout"]["yaxis"]  # 0.9 and 0.5: Plotly's own range
    lr = Window("learning rate", 1000)
    lr.apply({"k": "points", "win": "learning rate", "x": 1, "y": {"lr": 0.001}})
    lr.apply({"k": "points", "win": "learning rate", "x": 2, "y": {"lr": 0.001}})
    assert lr.message("e")[1]["layout"]["yaxis"]["range"] == [0.0005, 0.0015]


def test_a_float32_value_is_sent_in_the_fewest_digits_that_give_it_and_any_other_to_15_digits():
    import numpy as np
    import torch

    logged = [torch.tensor(v).item() for v in (0.9, 2.3025851, 1e-40, -3.4e38)]  # float32 tensors' values
    assert logged[0] == 0.8999999761581421
    sent = float32_digits([*logged, 0.1, 1 / 3, 1e300, 3, None, -0.0, 0.0006000000000000001])
    assert sent[:4] == [0.9, 2.3025851, 1e-40, -3.4e38]
    assert [np.float32(v) for v in sent[:4]] == [np.float32(v) for v in logged]  # the same float32
    # Doubles a float32 does not hold: to 15 digits, a scheduler's last-digit noise gone from the hover
    assert sent[4:] == [0.1, 0.333333333333333, 1e300, 3.0, None, -0.0, 0.0006]
    # Whole numbers as they are: a count above 2**24 that a float32 holds was sent as 64000190.
    assert float32_digits([64000192.0, 192000192.0, 2.0**40]) == [64000192.0, 192000192.0, 2.0**40]
    rng = random.Random(0)
    values = [float(np.float32(rng.uniform(-10, 10) * 10 ** rng.randint(-30, 30))) for _ in range(2000)]
    assert [np.float32(v) for v in float32_digits(values)] == [np.float32(v) for v in values]
    losses = [float(np.float32(rng.uniform(0, 5))) for _ in range(1000)]
    assert len(json.dumps(float32_digits(losses))) < 0.6 * len(json.dumps(losses))  # 17 digits become 7-8


def test_a_window_sends_a_float32_loss_in_float32_digits():
    window = Window("loss", 1000)
    window.apply({"k": "layout", "win": "loss", "opts": {"title": "loss"}})
    window.apply({"k": "points", "win": "loss", "x": 1, "y": {"train": 0.8999999761581421}})
    assert window.message("e")[1]["data"][0]["y"] == [0.9]


def test_a_smoothed_window_draws_each_trace_smoothed_as_tensorboard_does_with_the_values_faint_behind():
    window = Window("loss", 5000)
    window.apply({"k": "layout", "win": "loss", "opts": {"title": "loss", "smoothing": 0.6}})
    for x, (train, validation) in enumerate([(1.0, 3.0), (2.0, 3.0), (math.nan, None), (3.0, None)]):
        window.apply({"k": "points", "win": "loss", "x": x, "y": {"train": train, **(
            {"validation": validation} if validation else {})}})
    smooth, raw, flat, flat_raw = window.message("e")[1]["data"]
    # TensorBoard's moving average, debiased: 0.4 * 1 / (1 - 0.6), then (0.24 + 0.8) / (1 - 0.36), ...
    assert (smooth["name"], smooth["x"]) == ("train", [0, 1, 2, 3])
    assert smooth["y"] == pytest.approx([1.0, 1.625, None, 1.824 / 0.784])
    assert (raw["name"], raw["x"], raw["y"]) == ("train", [0, 1, 2, 3], [1.0, 2.0, None, 3.0])  # read back by name
    assert smooth.get("showlegend", True) and raw["showlegend"] is False
    assert (smooth["line"]["color"], raw["line"]["color"]) == ("rgb(31,119,180)", "rgba(31,119,180,0.3)")  # faint
    assert flat["line"]["color"] == "rgb(255,127,14)" and smooth["legendgroup"] == raw["legendgroup"] == "train"
    assert flat["y"] == flat_raw["y"] == [3.0, 3.0]  # a constant curve stays as it is
    # Hovered, each names its x as the window does (the tooltip read "0.391460 smoothed" alone)
    assert (smooth["hovertemplate"], raw["hovertemplate"]) == ("x %{x}: %{y:.6g} smoothed", "x %{x}: %{y:.6g}")
    window.apply({"k": "layout", "win": "loss", "opts": {"xlabel": "step"}})
    assert window.message("e")[1]["data"][0]["hovertemplate"] == "step %{x}: %{y:.6g} smoothed"

    for x in range(4, 20_000):
        window.apply({"k": "points", "win": "loss", "x": x, "y": {"train": float(x % 7)}})
    smooth, raw = window.message("e")[1]["data"][:2]  # thinned: 500 points, the last and the gap
    assert len(smooth["x"]) <= 500 + 2 and smooth["x"][-1] == raw["x"][-1] == 19_999 and None in smooth["y"]
    assert all(0 <= y <= 6 for y in smooth["y"] if y is not None)
    assert all(len(repr(y)) <= 12 for y in smooth["y"] if y is not None)  # six digits: drawn, not read back


def test_a_window_that_names_its_smoothed_traces_draws_the_others_as_they_are_in_a_comparison_too():
    # Scalars smooths the steps' curve only: a few validation means smoothed lag behind their minimum.
    window = Window("loss", 5000)
    window.apply({"k": "layout", "win": "loss", "opts": {"smoothing": 0.6, "smoothed": ["train"]}})
    for x, (train, validation) in enumerate([(1.0, 0.9), (2.0, 0.5), (3.0, 0.7)]):
        window.apply({"k": "points", "win": "loss", "x": x, "y": {"train": train, "validation": validation}})
    data = window.message("e")[1]["data"]
    assert [line["name"] for line in data] == ["train", "train", "validation"]
    assert data[-1]["y"] == [0.9, 0.5, 0.7]
    compared = Window("loss", 5000)
    compared.apply({"k": "layout", "win": "loss", "opts": {"smoothing": 0.6, "smoothed": ["train"]}})
    compared.apply({"k": "points", "win": "loss", "x": 1, "y": {"lr=0.1/train": 1.0, "lr=0.1/validation": 0.9}})
    compared.opts["runs"] = ["lr=0.1"]
    assert [line["name"] for line in compared.message("e")[1]["data"]] == ["lr=0.1/train", "lr=0.1/train",
                                                                            "lr=0.1/validation"]


def test_the_smoothed_curves_of_many_traces_share_their_points_as_the_traces_share_the_window_s():
    import json

    window = Window("metrics", 1000)
    window.apply({"k": "layout", "win": "metrics", "opts": {"smoothing": 0.9}})
    for x in range(3000):
        window.apply({"k": "points", "win": "metrics", "x": x, "y": {f"m{i}": (x * i % 97) / 7 for i in range(40)}})
    data = window.message("e")[1]["data"]
    smooth = [line for line in data if "showlegend" not in line]
    assert len(smooth) == 40 and all(len(line["x"]) <= 3000 // 40 + 1 for line in smooth)
    assert sum(len(line["x"]) for line in data) <= WINDOW_POINTS + 3000 + 40
    assert len(json.dumps(data)) < 300_000  # 370 KB when each smoothed curve had up to 500 points


def test_a_window_with_only_its_layout_has_nothing_to_send():
    windows = Windows(1000)
    windows.apply([{"k": "run", "env": "e"}, {"k": "layout", "win": "loss", "opts": {"xlabel": "epoch"}}])
    assert windows.by_name["loss"].message("e") is None


def test_a_text_window_shows_its_latest_text():
    windows = Windows(1000)
    windows.apply([{"k": "text", "win": "notes", "x": 1, "html": "old"},
                   {"k": "text", "win": "notes", "x": 2, "html": "new"}])
    endpoint, message = windows.by_name["notes"].message("e")
    assert message["data"] == [{"content": "new", "type": "text"}]


@pytest.mark.parametrize("budget, error", [(9, ValueError), (10.0, TypeError), (True, TypeError),
                                           ("1000", TypeError)])
def test_points_per_trace_must_be_an_int_of_at_least_10(budget, error):
    with pytest.raises(error, match=r"points_per_trace must be an int >= 10, got"):
        Windows(budget)


def test_a_window_of_161_traces_stays_under_300_kb_and_keeps_every_trace_s_extremes():
    import json

    rng = random.Random(161)
    names = [f"features.{i}.conv" for i in range(161)]
    windows = Windows(1000)
    lowest, highest = {}, {}
    for step in range(1, 5001):
        values = {n: rng.uniform(0.0, 1.0) * 10 ** rng.uniform(-4, 1) for n in names}
        for n, y in values.items():
            lowest[n] = min(lowest.get(n, math.inf), y)
            highest[n] = max(highest.get(n, -math.inf), y)
        windows.apply([{"k": "points", "win": "grad norm", "x": step, "y": values}])
    endpoint, message = windows.by_name["grad norm"].message("e")
    assert len(json.dumps(message, separators=(",", ":"))) < 300_000
    for trace in message["data"]:
        assert [min(trace["y"]), max(trace["y"])] == float32_digits([lowest[trace["name"]], highest[trace["name"]]])
        assert trace["x"][0] == 1 and trace["x"][-1] == 5000


def test_a_table_shows_a_float32_tensor_s_value_in_its_fewest_digits_and_arithmetic_without_its_noise():
    import numpy as np

    from monitor.windows import _value

    assert _value(float(np.float32(0.7))) == "0.7"  # add_hparams({"lr": torch.tensor(0.7)})
    assert _value(4.0) == "4" and _value(1e16) == "1e+16"  # a metric best_epoch=4, held as 4.0
    assert _value(0.1 * 3) == "0.3" and _value(0.123456789012345) == "0.123456789012" and _value(3) == "3"
    # A metric (a mean of float32 losses, held as a float64) to 6 digits in the hparams pane
    from monitor.windows import _hparams_html
    metrics = {"loss": 1.33475914001465, "mase": 1.49221535225199, "acc": float(np.float32(0.7))}
    html = _hparams_html([{"hparams": {"lr": 0.000316227766017}, "metrics": metrics}])
    assert "<td>0.000316227766017</td>" in html and "<td>1.33476</td>" in html and "<td>1.49222</td>" in html
    assert "<td>0.7</td>" in html
    assert "Metrics" not in _hparams_html([{"hparams": {"lr": 0.1}, "metrics": {}}])  # pretraining, no validation
    # ... unless those 6 hide it: a physicist's conserved energy ratio read as exactly 1, a drift as a whole number
    metrics = {"energy_ratio": 1.000000000123, "drift": 653461230.3, "rel_l2": 1.2345678e-9, "steps": 1234567.0}
    html = _hparams_html([{"hparams": {}, "metrics": metrics}])
    for shown in ("1.00000000012", "6.53461e+08", "1.23457e-09", "1234567"):
        assert f"<td>{shown}</td>" in html, html


def test_a_comparison_of_runs_with_more_traces_each_than_dashes_gives_each_trace_a_colour_and_each_run_a_dash():
    # Twelve tasks' accuracies a run, two runs: a colour a run and five dashes made tasks 0, 5 and 10 one look.
    window = Window("acc", 1000)
    window.apply({"k": "layout", "win": "acc", "opts": {"runs": ["a", "b"]}})
    for x in (1, 2):
        window.apply({"k": "points", "win": "acc", "x": x,
                      "y": {f"{run}/task{t}": 0.1 * t for run in ("a", "b") for t in range(12)}})
    styles = {t["name"]: (t["line"]["color"], t["line"]["dash"]) for t in window.message("e")[1]["data"]
              if t.get("showlegend", True)}
    assert len({styles[f"a/task{t}"][0] for t in range(12)}) == 12  # past Plotly's ten, none twice
    assert {styles[f"a/task{t}"][1] for t in range(12)} == {"solid"} and {styles[f"b/task{t}"][1] for t in range(12)} \
        == {"dash"} and styles["a/task3"][0] == styles["b/task3"][0]


def test_a_comparison_of_a_sweep_s_64_runs_gives_each_run_a_colour_of_its_own():
    # 64 trials' validation losses compared: Plotly's ten colours made six runs share each.
    runs = [f"sweep-{i:02d}" for i in range(64)]
    window = Window("loss", 12000)
    window.apply({"k": "layout", "win": "loss", "opts": {"runs": runs}})
    window.apply({"k": "points", "win": "loss", "x": 1, "y": {f"{run}/validation": 1.0 for run in runs}})
    colours = [t["line"]["color"] for t in window.message("e")[1]["data"] if t.get("showlegend", True)]
    assert len(colours) == len(set(colours)) == 64
    few = Window("loss", 1000)  # ten or fewer: Plotly's own, in its order
    few.apply({"k": "layout", "win": "loss", "opts": {"runs": ["a", "b"]}})
    few.apply({"k": "points", "win": "loss", "x": 1, "y": {"a/train": 1.0, "b/train": 2.0}})
    assert [t["line"]["color"] for t in few.message("e")[1]["data"] if t.get("showlegend", True)] == \
        ["rgb(31,119,180)", "rgb(255,127,14)"]


def test_a_point_that_comes_late_takes_its_place_and_a_run_that_goes_back_is_cut_where_it_went_back():
    # Two evaluation threads finished steps 20, 10, 40, 30, ...: each late one cut the curve back
    # to it, and the pane kept x 10, 30, 50, 70, 90 of ten evaluations.
    late = Window("bg val loss", 1000)
    for x in (20, 10, 40, 30, 60, 50, 80, 70, 100, 90):
        assert late.apply({"k": "points", "win": "bg val loss", "x": x, "y": {"validation": x / 100}}) == []
    assert late.traces["validation"].points() == ([10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
                                                 [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    resumed = Window("loss", 1000)  # a script resumed from step 40 logs 40 again: the killed run's 40-55 go
    for x in [*range(0, 56), *range(40, 60)]:
        resumed.apply({"k": "points", "win": "loss", "x": x, "y": {"train": float(x)}})
    assert resumed.traces["train"].points()[0] == list(range(60))
    restarted = Window("episode return", 1000)  # an episode counter not kept by the checkpoint starts at 1
    for x in [*range(1, 106), *range(1, 4)]:
        went_back = restarted.apply({"k": "points", "win": "episode return", "x": x, "y": {"train": 1.0}})
    assert restarted.traces["train"].points()[0] == [1, 2, 3] and went_back == []


def test_a_long_noisy_curve_is_smoothed_from_its_values_not_from_the_extremes_it_shows():
    # 200,000 steps of a loss of mean 1.0 with a long tail: the thinned curve keeps each stretch's
    # lowest and highest, and smoothing those drew the loss at about 3.3, never under 1.24.
    import random

    rng = random.Random(0)
    window = Window("loss", 1000)
    window.apply({"k": "layout", "win": "loss", "opts": {"smoothing": 0.6}})
    for x in range(1, 200_001):
        window.apply({"k": "points", "win": "loss", "x": x, "y": {"train": rng.expovariate(1.0)}})
    smooth, raw = window.message("e")[1]["data"][:2]
    assert max(raw["y"]) > 10 and min(raw["y"]) < 0.001  # the extremes still shown, faint
    assert smooth["x"][0] == 1 and smooth["x"][-1] == 200_000
    assert all(0.8 < y < 1.2 for y in smooth["y"][10:]), smooth["y"][:20]
