"""The callbacks in a real loop, against a real Visdom server: what the dashboard holds afterwards."""
from __future__ import annotations

import base64
import math

import pytest
import torch
from torch import nn

from monitor import GradNorms, Images, LearningRate, Monitor, Scalars, Summary
from monitor.imaging import encode_grid


def live_monitor(server, env: str, tmp_path, *callbacks) -> Monitor:
    return Monitor(list(callbacks), env=env, server="http://127.0.0.1", port=server.port,
                   run_dir=tmp_path / env, raise_errors=True)


def model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, torch.rand(12, 1, 4, 4), torch.randint(0, 3, (12,))


def test_a_plain_loop_shows_every_scalar_once_in_step_order_in_its_window_and_trace(
        visdom_server, read_window, tmp_path):
    model, x, y = model_and_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    losses, accuracies, validation, rates = [], [], [], []
    with live_monitor(visdom_server, "live-scalars", tmp_path, Scalars(), LearningRate()) as monitor:
        monitor.train_start(model, optimizer)
        for epoch in range(2):
            monitor.epoch_start(epoch)
            for _ in range(6):
                outputs = model(x)
                loss = nn.functional.cross_entropy(outputs, y)
                optimizer.zero_grad()
                loss.backward()
                monitor.after_backward()
                rates.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                scheduler.step()
                accuracy = (outputs.argmax(1) == y).float().mean()
                monitor.step_end(loss=loss, metrics={"accuracy": accuracy})
                losses.append(loss.item())
                accuracies.append(accuracy.item())
            validation.append(0.5 / (epoch + 1))
            monitor.validation_end({"accuracy": validation[-1]})
        assert monitor.flush(timeout=10)
    steps = list(range(1, 13))
    assert read_window(visdom_server, "live-scalars", "loss") == {"train": (steps, losses)}
    assert read_window(visdom_server, "live-scalars", "accuracy") == {
        "train": (steps, accuracies), "validation": ([6, 12], validation)}
    assert read_window(visdom_server, "live-scalars", "learning rate") == {"lr": (steps, rates)}


def test_non_finite_values_arrive_as_gaps_at_their_step(visdom_server, read_window, tmp_path):
    with live_monitor(visdom_server, "live-gaps", tmp_path, Scalars()) as monitor:
        for loss in (1.0, math.nan, math.inf, 0.5):
            monitor.step_end(loss=torch.tensor(loss))
        assert monitor.flush(timeout=10)
    xs, ys = read_window(visdom_server, "live-gaps", "loss")["train"]
    assert xs == [1, 2, 3, 4] and ys[0] == 1.0 and ys[3] == 0.5
    assert all(y is None or not math.isfinite(y) for y in ys[1:3])


def test_grad_norms_on_the_dashboard_equal_vector_norm_of_gradients(visdom_server, read_window, tmp_path):
    model, x, y = model_and_data()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    expected: dict[str, list[float]] = {"1.Linear": [], "3.Linear": [], "total": []}
    with live_monitor(visdom_server, "live-grads", tmp_path, GradNorms()) as monitor:
        monitor.train_start(model, optimizer)
        for _ in range(5):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            monitor.after_backward()
            for name, layer in (("1.Linear", model[1]), ("3.Linear", model[3])):
                expected[name].append(torch.linalg.vector_norm(
                    torch.cat([layer.weight.grad.flatten(), layer.bias.grad.flatten()])).item())
            expected["total"].append(torch.linalg.vector_norm(
                torch.cat([p.grad.flatten() for p in model.parameters()])).item())
            optimizer.step()
            monitor.step_end()
        assert monitor.flush(timeout=10)
    shown = read_window(visdom_server, "live-grads", "grad norm")
    assert set(shown) == set(expected)
    for trace, values in expected.items():
        assert shown[trace][0] == [1, 2, 3, 4, 5]
        assert shown[trace][1] == pytest.approx(values, rel=1e-5)


def test_the_image_grid_arrives_with_its_captions(visdom_server, read_window_raw, tmp_path):
    _, x, y = model_and_data()
    names = ["zero", "one", "two"]
    with live_monitor(visdom_server, "live-images", tmp_path,
                      Images(every=1, count=4, class_names=names)) as monitor:
        monitor.step_end(inputs=x, targets=y)
        assert monitor.flush(timeout=10)
    content = read_window_raw(visdom_server, "live-images", "inputs")["content"]
    png = base64.b64decode(content["src"].removeprefix("data:image/png;base64,"))
    assert png == encode_grid(x[:4], [names[i] for i in y[:4].tolist()], heading="step 1")


def test_the_summary_pane_arrives(visdom_server, read_window_raw, tmp_path):
    model, _, _ = model_and_data()
    with live_monitor(visdom_server, "live-summary", tmp_path, Summary(hparams={"batch_size": 12})) as monitor:
        monitor.train_start(model, hparams={"lr": 0.1})
        assert monitor.flush(timeout=10)
    html = read_window_raw(visdom_server, "live-summary", "summary")["content"]
    assert "(1): Linear(in_features=16, out_features=8, bias=True)" in html
    assert "<td><b>batch_size</b></td><td>12</td>" in html and "<td><b>lr</b></td><td>0.1</td>" in html


def test_tensors_changed_in_place_after_logging_arrive_as_they_were_logged(
        visdom_server, read_window, read_window_raw, tmp_path):
    model, x, y = model_and_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_buffer, batch_buffer = torch.zeros(()), torch.zeros_like(x)
    logged_losses, logged_total = [], []
    with live_monitor(visdom_server, "live-snapshots", tmp_path,
                      Scalars(), GradNorms(), Images(every=1, count=2, captions=None)) as monitor:
        monitor.train_start(model, optimizer)
        for step in range(3):
            batch_buffer.copy_(x + step)  # the loop refills one buffer, as a pinned loader does
            optimizer.zero_grad(set_to_none=False)
            loss = nn.functional.cross_entropy(model(batch_buffer), y)
            loss.backward()
            monitor.after_backward()
            logged_total.append(torch.linalg.vector_norm(
                torch.cat([p.grad.flatten() for p in model.parameters()])).item())
            optimizer.step()
            loss_buffer.copy_(loss.detach())
            monitor.step_end(loss=loss_buffer, inputs=batch_buffer)
            logged_losses.append(loss_buffer.item())
            loss_buffer.fill_(-1.0)  # changed in place right after logging
        for p in model.parameters():
            p.grad.zero_()
        batch_buffer.fill_(0.0)
        assert monitor.flush(timeout=10)
    assert read_window(visdom_server, "live-snapshots", "loss")["train"] == ([1, 2, 3], logged_losses)
    assert read_window(visdom_server, "live-snapshots", "grad norm")["total"][1] == pytest.approx(
        logged_total, rel=1e-5)
    content = read_window_raw(visdom_server, "live-snapshots", "inputs")["content"]
    assert base64.b64decode(content["src"].split(",", 1)[1]) == encode_grid(x[:2] + 2, heading="step 1")
