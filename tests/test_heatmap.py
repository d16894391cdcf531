"""The heatmap form: a window of many layers as layers x steps, within budget, extremes kept."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
from torch import nn

from monitor import GradNorms
from monitor.heatmap import Grid
from monitor.replay import replay
from monitor.windows import Windows
from helpers.monitors import live_monitor


def deep_model(blocks: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(blocks):
        layers += [nn.Linear(8, 8), nn.LayerNorm(8), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(8, 3))


def test_a_grid_keeps_each_trace_s_extremes_in_order_within_its_columns():
    rng = random.Random(0)
    grid = Grid(cells=200)  # 2 traces: at most 100 columns
    raw: dict[str, list[tuple[int, float]]] = {"a": [], "b": []}
    for step in range(1, 5001):
        values = {"a": rng.gauss(0, 1), "b": math.nan if step == 77 else rng.uniform(0, 5)}
        grid.add(step, values)
        for name, y in values.items():
            if math.isfinite(y):
                raw[name].append((step, y))
    assert len(grid.xs) <= 100 and grid.xs[0] == 1
    assert grid.nonfinite == 1
    for name, points in raw.items():
        xs, ys = grid.points(name)
        assert xs == sorted(xs) and xs[0] == 1 and xs[-1] == 5000  # spans the run, ends at the latest
        assert min(ys) == min(y for _, y in points) and max(ys) == max(y for _, y in points)
        highest = max(v for v in grid.log_rows([name])[0] if v is not None)  # the heatmap's cells
        assert highest == round(math.log10(max(ys)), 3)


def test_each_cell_is_the_log10_of_its_highest_value_to_3_decimals_and_empty_where_none_is_positive():
    rng = random.Random(1)
    grid = Grid(cells=10_000)  # 30 traces: a column a step for these 40 steps
    names = [f"{i}.Linear" for i in range(30)]
    steps = []
    for step in range(1, 41):
        values = {name: rng.choice([0.0, -1.0, math.nan, math.inf, rng.uniform(1e-9, 1e4)]) for name in names}
        grid.add(step, values)
        steps.append(values)
    for name, row in zip(names, grid.log_rows(names)):
        expected = [round(math.log10(v[name]), 3) if v[name] > 0 and math.isfinite(v[name]) else None for v in steps]
        assert list(row) == expected


def test_a_161_layer_window_stays_under_300_kb_and_every_layer_keeps_its_highest_value():
    rng = random.Random(161)
    names = [f"features.{i}.conv" for i in range(161)]
    windows = Windows(1000)
    windows.apply([{"k": "layout", "win": "grad norm", "opts": {"ytype": "log", "form": "heatmap", "top": 3}}])
    highest: dict[str, float] = {}
    for step in range(1, 20_001):
        values = {n: rng.uniform(0.0, 1.0) * 10 ** rng.uniform(-4, 1) for n in names}
        for n, y in values.items():
            highest[n] = max(highest.get(n, 0.0), y)
        values["total"] = math.sqrt(sum(v * v for v in values.values()))
        windows.apply([{"k": "points", "win": "grad norm", "x": step, "y": values}])
    endpoint, message = windows.by_name["grad norm"].message("e")
    assert len(json.dumps(message, separators=(",", ":"))) < 300_000
    *lines, cells = message["data"]
    assert cells["type"] == "heatmap" and cells["y"] == names  # the layer names on an axis
    for name, row in zip(cells["y"], cells["z"]):  # log10 of each layer's highest norm
        assert max(v for v in row if v is not None) == round(math.log10(highest[name]), 3)
    assert [line["name"] for line in lines][0] == "total" and len(lines) == 4
    assert all(line["x"][-1] == 20_000 for line in lines)
    total = len(lines[0]["x"])  # thinned as any line (the total's), not to the heatmap's 62 columns
    assert total > 500 and all(abs(len(line["x"]) - total) < 0.1 * total for line in lines)


def test_the_largest_layers_lines_keep_every_step_while_a_line_window_would():
    """322 layers: the heatmap's 31 columns had given a layer's line 40 points in 300 steps."""
    names = [f"blocks.{i}.{kind}" for i in range(161) for kind in ("Linear", "LayerNorm")]
    windows = Windows(1000)
    windows.apply([{"k": "layout", "win": "grad norm", "opts": {"ytype": "log", "form": "heatmap"}}])
    for step in range(1, 301):
        values = {n: (i + 1) * (1 + step % 7) for i, n in enumerate(names)}
        windows.apply([{"k": "points", "win": "grad norm", "x": step, "y": {**values, "total": 1.0}}])
    *lines, cells = windows.by_name["grad norm"].message("e")[1]["data"]
    assert len(cells["x"]) < 40  # the heatmap's columns merge
    assert [line["name"] for line in lines] == ["total", *names[::-1][:5]]
    for line in lines[1:]:
        row = names.index(line["name"]) + 1
        assert line["x"] == list(range(1, 301)) and line["y"] == [row * (1 + step % 7) for step in range(1, 301)]


def test_the_lines_above_the_heatmap_are_the_layers_largest_at_the_latest_step():
    windows = Windows(1000)
    windows.apply([{"k": "layout", "win": "w", "opts": {"form": "heatmap", "top": 2}}])
    windows.apply([{"k": "points", "win": "w", "x": 1, "y": {"a": 9.0, "b": 1.0, "c": 2.0, "total": 10.0}}])
    windows.apply([{"k": "points", "win": "w", "x": 2, "y": {"a": 1.0, "b": 3.0, "c": 2.0, "total": 4.0}}])
    _, message = windows.by_name["w"].message("e")
    assert [trace["name"] for trace in message["data"]] == ["total", "b", "c", "layers"]


@pytest.mark.parametrize("blocks, form, shows_heatmap", [(2, "auto", False), (8, "auto", True),
                                                          (8, "lines", False), (2, "heatmap", True)])
def test_grad_norms_draw_a_heatmap_beyond_16_layers_unless_told(visdom_server, read_window_raw, tmp_path,
                                                                 blocks, form, shows_heatmap):
    model = deep_model(blocks)  # 2 blocks: 5 layers; 8 blocks: 17
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    env = f"heatmap-{blocks}-{form}"
    with live_monitor(visdom_server, env, tmp_path, GradNorms(form=form)) as monitor:
        monitor.train_start(model, optimizer)
        x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            monitor.after_backward()
            optimizer.step()
            monitor.step_end()
        assert monitor.flush(timeout=10)
    types = [trace["type"] for trace in read_window_raw(visdom_server, env, "grad norm")["content"]["data"]]
    assert ("heatmap" in types) == shows_heatmap


def test_a_deep_model_s_heatmap_on_the_dashboard_equals_a_replay_of_its_run_log(
        visdom_server, read_window_raw, tmp_path):
    model = deep_model(60)  # 121 layers
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
    with live_monitor(visdom_server, "heatmap-live", tmp_path, GradNorms()) as monitor:
        monitor.train_start(model, optimizer)
        for _ in range(40):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            monitor.after_backward()
            optimizer.step()
            monitor.step_end()
        assert monitor.flush(timeout=10)
        run_log = monitor.sink.run_dir / "runlog.jsonl"
    live = read_window_raw(visdom_server, "heatmap-live", "grad norm")["content"]
    replay(run_log, "heatmap-replayed", port=visdom_server.port)
    assert read_window_raw(visdom_server, "heatmap-replayed", "grad norm")["content"] == live
    assert len(live["data"][-1]["y"]) == 121 and live["data"][-1]["x"] == list(range(1, 41))


def test_a_model_grown_past_the_lines_keeps_its_layers_earlier_steps_in_the_heatmap_and_stays_one(
        visdom_server, read_window_raw, tmp_path):
    """A progressive network's new column took it past 16 layers at step 21: the heatmap began
    there, each layer's steps 1-20 gone from the pane; experts that idle some steps made it flip
    between lines and a heatmap every step."""
    from monitor.runlog import RunLog

    model = deep_model(7)  # 15 layers
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
    with live_monitor(visdom_server, "grown", tmp_path, GradNorms()) as monitor:
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.01))
        for step in range(1, 31):
            if step == 21:  # a new task's column
                model = nn.Sequential(*model, nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 3))
                monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.01))
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            if step > 21 and step % 2:  # the new head idles at odd steps: fewer layers than the lines hold
                for p in model[-3:].parameters():
                    p.grad = None
            monitor.after_backward()
            monitor.state.optimizer.step()
            monitor.step_end()
        assert monitor.flush(timeout=10)
        run_log = monitor.sink.run_dir / RunLog.FILENAME
    heatmap = read_window_raw(visdom_server, "grown", "grad norm")["content"]["data"][-1]
    assert heatmap["type"] == "heatmap" and heatmap["x"] == list(range(1, 31))
    first = heatmap["y"].index("0.Linear")
    assert all(value is not None for value in heatmap["z"][first][:20])  # the steps before it grew
    forms = [e["opts"].get("form") for e in RunLog.read(run_log) if e["k"] == "layout" and e["win"] == "grad norm"]
    assert forms == [None, "heatmap"]  # laid out again once, not at every step


def test_grad_norms_name_a_bad_form():
    with pytest.raises(ValueError, match="form must be 'auto' or 'lines' or 'heatmap', got 'bars'"):
        GradNorms(form="bars")


def test_steps_at_one_x_share_a_column_and_a_step_before_the_latest_is_left_out():
    # A loop that logs grad norms at each micro-batch of an accumulated step, with the step's number.
    grid = Grid()
    for x, values in [(1, {"a": 1.0}), (2, {"a": 4.0}), (2, {"a": 0.5}), (3, {"a": 2.0}), (2, {"a": 99.0})]:
        grid.add(x, values)
    assert grid.xs == [1, 2, 3]
    assert grid.points("a") == ([1, 2, 2, 3], [1.0, 0.5, 4.0, 2.0])  # step 2's lowest and highest
