"""Scalars: the loss and metrics, per step or per epoch, train and validation in one window."""
from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest
import torch

from monitor import Scalars
from monitor.records import Layout, Points
from helpers.monitors import live_monitor, monitor_with


def test_scalars_log_loss_and_each_metric_per_step_in_their_own_windows():
    monitor, sink = monitor_with(Scalars())
    for step, loss in enumerate([0.9, 0.7, 0.5], start=1):
        monitor.step_end(loss=torch.tensor(loss), metrics={"accuracy": step / 10, "top5": torch.tensor([0.5])})
    assert sink.points("loss") == {"train": [(1, pytest.approx(0.9)), (2, pytest.approx(0.7)),
                                             (3, pytest.approx(0.5))]}
    assert sink.points("accuracy") == {"train": [(1, 0.1), (2, 0.2), (3, 0.3)]}
    assert sink.points("top5") == {"train": [(1, 0.5), (2, 0.5), (3, 0.5)]}


def test_scalars_every_logs_the_first_step_and_each_every_th_after_it():
    monitor, sink = monitor_with(Scalars(every=3))
    for step in range(1, 8):
        monitor.step_end(loss=float(step))
    assert sink.points("loss") == {"train": [(1, 1.0), (4, 4.0), (7, 7.0)]}


def test_scalars_put_validation_in_the_train_metrics_window_as_a_second_trace():
    monitor, sink = monitor_with(Scalars())
    monitor.step_end(loss=1.0, metrics={"accuracy": 0.5})
    monitor.step_end(loss=0.8, metrics={"accuracy": 0.6})
    monitor.validation_end({"loss": 0.9, "accuracy": 0.55})
    assert sink.points("accuracy") == {"train": [(1, 0.5), (2, 0.6)], "validation": [(2, 0.55)]}
    assert sink.points("loss") == {"train": [(1, 1.0), (2, 0.8)], "validation": [(2, 0.9)]}


def test_scalars_per_epoch_average_the_epoch_at_the_number_of_epochs_done():
    monitor, sink = monitor_with(Scalars(x="epoch"))
    monitor.train_start()
    monitor.validation_end({"loss": 2.0})  # before any training: 0 epochs done
    for epoch, losses in enumerate([[1.0, 2.0, 3.0], [0.5, 1.5]]):
        monitor.epoch_start(epoch)
        for i, loss in enumerate(losses):  # tensors and numbers alike
            monitor.step_end(loss=torch.tensor(loss) if i % 2 else loss, metrics={"accuracy": 0.1 * (i + 1)})
        monitor.epoch_end()
        monitor.validation_end({"loss": 1.0 / (epoch + 1)})
    assert sink.points("loss") == {"validation": [(0, 2.0), (1, 1.0), (2, 0.5)],
                                   "train": [(1, 2.0), (2, 1.0)]}
    assert sink.points("accuracy") == {"train": [(1, pytest.approx(0.2)), (2, pytest.approx(0.15))]}


def test_scalars_per_epoch_carry_a_half_done_epoch_through_a_checkpoint():
    monitor, _ = monitor_with(Scalars(x="epoch"))
    monitor.epoch_start(0)
    monitor.step_end(loss=torch.tensor(1.0))
    monitor.step_end(loss=2.0)
    saved = torch.load(_saved(monitor.state_dict()), weights_only=True)
    resumed, sink = monitor_with(Scalars(x="epoch"))
    resumed.load_state_dict(saved)
    resumed.epoch_start(0)  # the resumed loop enters the same epoch again
    resumed.step_end(loss=6.0)
    resumed.epoch_end()
    assert sink.points("loss") == {"train": [(1, 3.0)]}


def _saved(state) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_scalars_per_epoch_take_metrics_given_to_epoch_end_over_the_mean():
    monitor, sink = monitor_with(Scalars(x="epoch"))
    monitor.epoch_start(0)
    monitor.step_end(loss=1.0, metrics={"accuracy": 0.1})
    monitor.epoch_end({"accuracy": 0.9})
    assert sink.points("accuracy") == {"train": [(1, 0.9)]}


def test_scalars_per_step_show_epoch_end_metrics_as_an_epoch_trace():
    monitor, sink = monitor_with(Scalars())
    monitor.step_end(loss=1.0, metrics={"accuracy": 0.1})
    monitor.step_end(loss=1.0, metrics={"accuracy": 0.3})
    monitor.epoch_end({"accuracy": 0.2})
    assert sink.points("accuracy") == {"train": [(1, 0.1), (2, 0.3)], "epoch": [(2, 0.2)]}


def test_scalars_set_each_windows_title_and_axis_labels_once():
    monitor, sink = monitor_with(Scalars(x="epoch"))
    for epoch in range(3):
        monitor.epoch_start(epoch)
        monitor.step_end(loss=1.0, metrics={"accuracy": 0.5})
        monitor.epoch_end()
        monitor.validation_end({"accuracy": 0.5})
    layouts = sink.of(Layout)
    assert sorted(r.window for r in layouts) == ["accuracy", "loss"]
    # Each point an epoch's mean: none smoothed; by step, the steps' curve alone
    assert {r.window: r.opts for r in layouts}["loss"] == {"title": "loss", "xlabel": "epoch", "ylabel": "loss"}
    for layout in layouts:  # each before its window's first points
        first = next(i for i, r in enumerate(sink.records) if isinstance(r, Points) and r.window == layout.window)
        assert sink.records.index(layout) < first
    by_step, laid_out = monitor_with(Scalars())
    by_step.step_end(loss=1.0)
    assert laid_out.of(Layout)[0].opts == {"title": "loss", "xlabel": "step", "ylabel": "loss", "smoothing": 0.6,
                                           "smoothed": ["train"]}


def test_scalars_pass_nan_and_inf_through_for_the_sink_to_show_as_gaps():
    monitor, sink = monitor_with(Scalars())
    monitor.step_end(loss=float("nan"), metrics={"grad": torch.tensor(float("inf"))})
    assert math.isnan(sink.points("loss")["train"][0][1])
    assert sink.points("grad") == {"train": [(1, math.inf)]}


@pytest.mark.parametrize("x", ["step", "epoch"])
@pytest.mark.parametrize("bad, error", [("high", TypeError), ([0.1, 0.2], TypeError),
                                        (torch.ones(3), ValueError), (None, TypeError)])
def test_scalars_reject_unknown_metric_types_naming_the_metric_after_logging_the_rest(x, bad, error):
    monitor, sink = monitor_with(Scalars(x=x))
    monitor.epoch_start(0)
    with pytest.raises(error, match="metric 'mood'.*; metric 'phase'") as refused:  # every bad one, in one report
        monitor.step_end(loss=1.0, metrics={"mood": bad, "accuracy": 0.5, "phase": bad})
    if x == "step":  # the good ones are logged, and the report says so
        assert str(refused.value).endswith(" (not logged; the call's 2 other metrics were)")
    monitor.epoch_end()
    assert sink.points("accuracy")["train"] == [(1, 0.5)]


def test_a_dict_of_metrics_under_one_name_is_refused_saying_how_to_flatten_it():
    # A detector's COCO evaluation: {"AP": {"small": ..., "large": ...}} was refused with no way named.
    monitor, sink = monitor_with(Scalars())
    with pytest.raises(TypeError, match=r"metric 'AP': .*a dict of them goes in flattened, \{f'AP/\{k\}': v for k, v "
                                        r"in AP.items\(\)\}, or as traces of one window, "
                                        r"monitor.log.scalars\('AP', step, AP\)"):
        monitor.validation_end({"AP": {"small": 0.2, "large": 0.6}, "mAP": 0.4})
    assert sink.points("mAP")["validation"] == [(0, 0.4)]


def test_scalars_unknown_metric_is_reported_once_and_training_goes_on(caplog):
    monitor, sink = monitor_with(Scalars(), raise_errors=False)
    with caplog.at_level(logging.WARNING, logger="monitor"):
        for _ in range(5):
            monitor.step_end(loss=1.0, metrics={"note": "warming up"})
    assert len(caplog.records) == 1 and "metric 'note'" in caplog.text
    assert len(sink.points("loss")["train"]) == 5


def test_a_metric_that_goes_bad_later_is_reported_too_each_set_of_names_once(caplog):
    monitor, sink = monitor_with(Scalars(), raise_errors=False)
    with caplog.at_level(logging.WARNING, logger="monitor"):
        for step in range(10):
            monitor.step_end(loss=1.0, metrics={"a": None if step == 0 else 0.5,
                                                "b": torch.ones(2) if step >= 5 else 0.25})
    assert [("'a'" in r.getMessage(), "'b'" in r.getMessage()) for r in caplog.records] == [(True, False), (False, True)]
    assert len(sink.points("b")["train"]) == 5 and len(sink.points("a")["train"]) == 9


@pytest.mark.parametrize("x", ["step", "epoch"])
@pytest.mark.parametrize("value", [np.array([0.25]), np.array(0.25), np.float32(0.25), np.array([[1]], dtype=np.int64)])
def test_a_one_element_numpy_array_is_a_metric_as_a_one_element_tensor_is(value, x):
    monitor, sink = monitor_with(Scalars(x=x))
    monitor.step_end(loss=1.0, metrics={"m": value})
    monitor.epoch_end()
    assert sink.points("m")["train"] == [(1, float(value.item()))]


@pytest.mark.parametrize("x", ["step", "epoch"])
def test_a_bool_metric_is_0_or_1_as_tensorboard_draws_it(x):
    # An RL loop's info["is_success"], whatever holds it; the epoch's mean is the success rate.
    monitor, sink = monitor_with(Scalars(x=x))
    monitor.epoch_start(0)
    for solved in (True, np.bool_(False), torch.tensor(True), np.array([True])):
        monitor.step_end(metrics={"solved": solved})
    monitor.epoch_end()
    monitor.log.scalar("episode", "success", 7, False)
    assert sink.points("solved")["train"] == ([(1, 1.0), (2, 0.0), (3, 1.0), (4, 1.0)] if x == "step" else [(1, 0.75)])
    assert sink.points("episode")["success"] == [(7, 0.0)]


def test_scalars_keep_the_loss_value_of_logging_time_when_the_loop_changes_it_in_place():
    for x in ("step", "epoch"):
        monitor, sink = monitor_with(Scalars(x=x))
        monitor.epoch_start(0)
        loss = torch.tensor(1.5)
        monitor.step_end(loss=loss)
        loss.fill_(99.0)
        monitor.epoch_end()
        assert sink.points("loss")["train"] == [(1, 1.5)]


# --- on a real server ---------------------------------------------------------------------------
def test_non_finite_values_arrive_as_gaps_at_their_step(visdom_server, read_window, tmp_path):
    with live_monitor(visdom_server, "live-gaps", tmp_path, Scalars()) as monitor:
        for loss in (1.0, math.nan, math.inf, 0.5):
            monitor.step_end(loss=torch.tensor(loss))
        assert monitor.flush(timeout=10)
    xs, ys = read_window(visdom_server, "live-gaps", "loss")["train"]
    assert xs == [1, 2, 3, 4] and ys[0] == 1.0 and ys[3] == 0.5
    assert all(y is None or not math.isfinite(y) for y in ys[1:3])


def test_scalars_given_to_a_monitor_per_fold_average_each_fold_s_epochs_alone():
    """Fold 0 given up mid-epoch: its unfinished sums were added into fold 1's first epoch."""
    scalars = Scalars(x="epoch")
    for fold, losses in enumerate(([100.0, 100.0, 100.0], [1.0, 3.0])):
        monitor, sink = monitor_with(scalars)
        monitor.epoch_start(0)
        for loss in losses:
            monitor.step_end(loss=loss)
        if fold == 1:
            monitor.epoch_end()
    assert sink.points("loss") == {"train": [(1, 2.0)]}


def test_a_loss_given_in_parts_is_refused_saying_how_to_plot_the_parts():
    monitor, sink = monitor_with(Scalars())
    with pytest.raises(TypeError, match=r"metric 'loss': .*: pass their total as loss= and the parts as traces of "
                                        r"the loss window, monitor.log.scalars\('loss', step, \{...\}\)"):
        monitor.step_end(loss={"ce": torch.tensor(1.0), "dice": torch.tensor(0.5)})
    monitor.step_end(loss=torch.tensor(1.5))
    monitor.log.scalars("loss", monitor.state.step, {"ce": 1.0, "dice": 0.5})
    assert sink.points("loss") == {"train": [(2, 1.5)], "ce": [(2, 1.0)], "dice": [(2, 0.5)]}


def test_a_model_s_output_object_given_as_the_loss_is_refused_in_a_line_pointing_at_its_loss():
    import dataclasses

    output = dataclasses.make_dataclass("Output", ["logits", "loss"])(torch.randn(32, 4), torch.tensor(1.0))
    monitor, _ = monitor_with(Scalars())
    with pytest.raises(TypeError) as refused:
        monitor.step_end(loss=output)
    message = str(refused.value)
    assert message.startswith("metric 'loss': value must be a number or a one-element tensor or numpy array, got Output(logits=")
    assert message.endswith("...: pass its .loss") and len(message) < 200


def test_a_loss_of_each_sample_is_refused_saying_to_pass_its_mean_and_one_good_metric_beside_it_counted_in_words():
    monitor, sink = monitor_with(Scalars())
    with pytest.raises(ValueError) as refused:
        monitor.step_end(loss=torch.ones(8), metrics={"accuracy": 0.5})  # a loss_fn(reduction="none")
    assert str(refused.value) == ("metric 'loss': value must be a number or a one-element tensor or numpy array, got a tensor of "
                                  "shape (8,): pass its mean, .mean() (a value for each sample, as "
                                  "reduction='none' gives) (not logged; the call's other metric was)")
    assert sink.points("accuracy") == {"train": [(1, 0.5)]}


@pytest.mark.parametrize("x", ["step", "epoch"])
def test_a_loss_given_as_loss_and_in_metrics_keeps_both_and_says_so_once(caplog, x):
    monitor, sink = monitor_with(Scalars(x=x))
    monitor.epoch_start(0)
    with caplog.at_level("WARNING", logger="monitor"):
        for _ in range(2):
            monitor.step_end(loss=1.0, metrics={"loss": 3.0})  # the batch's mean and the loop's own sum
    monitor.epoch_end()
    assert [r.getMessage() for r in caplog.records] == [
        "monitor: step_end was given a loss twice at step 1, as loss= and as metrics['loss']: the metric is logged "
        "as 'loss (metrics)'; name it apart, e.g. metrics={'loss_sum': ...}"]
    assert sink.points("loss (metrics)") == ({"train": [(1, 3.0), (2, 3.0)]} if x == "step" else {"train": [(1, 3.0)]})


def test_a_second_data_set_validated_under_the_same_trace_is_told_once_and_metrics_split_over_calls_are_not(caplog):
    monitor, sink = monitor_with(Scalars())
    with caplog.at_level("WARNING", logger="monitor"):
        for _ in range(2):
            monitor.step_end(loss=1.0)
            monitor.validation_end({"loss": 0.5})
            monitor.validation_end({"accuracy": 0.9})  # one validation, given in two calls: fine
            monitor.validation_end({"loss": 0.7})  # the test set's, with no trace of its own
    assert [r.getMessage() for r in caplog.records] == [
        "monitor: validation_end gave 'loss' again at step 1, in trace 'validation': the second data set's (a test "
        "set's) goes in a trace of its own, validation_end(metrics, trace='test'), or its points zigzag with the "
        "first's"]
    monitor, sink = monitor_with(Scalars())  # every N steps and at the epoch's end, on one step: the same set twice
    with caplog.at_level("WARNING", logger="monitor"):
        monitor.step_end(loss=1.0)
        monitor.validation_end({"loss": 0.5, "accuracy": torch.tensor(0.9)})
        monitor.validation_end({"loss": 0.5, "accuracy": torch.tensor(0.9)})
    assert caplog.records[-1].getMessage() == (
        "monitor: validation_end gave 'accuracy', 'loss' again at step 1, in trace 'validation': the same values: one "
        "data set validated twice (every N steps and at the epoch's end, when they fall on one step?): skip one, e.g. "
        "at the epoch's last batch, monitor.state.batch_index + 1 == len(loader)")


def test_a_metric_of_several_values_is_refused_saying_how_each_goes_in_under_a_name_of_its_own():
    monitor, _ = monitor_with(Scalars())
    with pytest.raises(ValueError, match=r"metric 'mae': .* got a tensor of shape \(12,\): one number a metric; "
                                         r"several \(one a target\) each go in under a name of their own, "
                                         r"\{f'mae/\{i\}': v for i, v in enumerate\(values\)\}"):
        monitor.validation_end({"mae": torch.rand(12)})  # a regression's MAE for each of 12 targets


def test_options_the_loop_gives_a_callback_s_window_add_up_with_the_callback_s_before_or_after_its_first_point(
        visdom_server, read_window_raw, tmp_path):
    """A scientist's log y axis set before the loop stopped Scalars from laying out the window
    (no smoothing, no y label), and set after it moved the learning rate among the metrics."""
    from monitor import GradNorms, LearningRate
    from monitor.records import Order
    from monitor.runlog import RunLog
    from monitor.windows import Windows

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with live_monitor(visdom_server, "log-axes", tmp_path, Scalars(), LearningRate(), GradNorms()) as monitor:
        monitor.log.window("rel_l2", ytype="log", ylabel="relative L2 error")  # before the first point
        monitor.log.window("grad norm", ytype="linear")
        monitor.train_start(model, optimizer)
        for step in range(3):
            model(torch.ones(1, 2)).sum().backward()
            monitor.after_backward()
            monitor.step_end(loss=1.0 / (step + 1), metrics={"rel_l2": 10.0 ** -step})
            monitor.log.window("learning rate", ytype="log")  # after it
        monitor.flush()
        rel_l2 = read_window_raw(visdom_server, "log-axes", "rel_l2")["content"]
        lr = read_window_raw(visdom_server, "log-axes", "learning rate")["content"]
        norms = read_window_raw(visdom_server, "log-axes", "grad norm")["content"]
    assert rel_l2["layout"]["yaxis"]["type"] == "log" and rel_l2["layout"]["yaxis"]["title"] == "relative L2 error"
    assert rel_l2["layout"]["xaxis"]["title"] == "step" and len(rel_l2["data"]) == 2  # smoothed, and faint behind
    assert lr["layout"]["yaxis"]["type"] == "log" and lr["layout"]["yaxis"]["title"] == "learning rate"
    assert norms["layout"]["yaxis"]["type"] == "linear" and norms["layout"]["yaxis"]["title"] == "L2 norm of the gradients"
    windows = Windows()
    windows.apply(RunLog.read(tmp_path / "log-axes" / RunLog.FILENAME))
    orders = {name: window.order for name, window in windows.by_name.items()}
    assert (orders["rel_l2"], orders["learning rate"], orders["grad norm"]) == (Order.METRICS, Order.LEARNING_RATE,
                                                                                Order.GRADIENTS)


def test_names_from_a_numpy_array_of_column_names_are_names():
    # np.str_ is a str: a DataFrame's columns were refused as "must be a non-empty str, not blank",
    # and a validation's np.str_ key was dropped.
    monitor, sink = monitor_with(Scalars())
    features = np.array(["age", "income"])
    monitor.log.scalars("importance", 1, dict(zip(features, np.array([0.25, 0.75], dtype=np.float32))))
    monitor.log.vector("importance by vector", 1, features, np.array([0.25, 0.75], dtype=np.float32))
    monitor.step_end(loss=1.0, metrics={np.str_("accuracy"): np.float64(0.5)})
    monitor.validation_end({np.str_("auc"): np.float64(0.75)})
    points = sink.of(Points)
    assert {p.window for p in points} >= {"importance", "importance by vector", "accuracy", "auc"}
    assert all(type(p.window) is str and all(type(t) is str for t in p.traces) for p in points)  # plain, to pickle
    assert [p.values for p in points if p.window == "auc"] == [(0.75,)]
    assert [p.values for p in points if p.window == "importance by vector"] == [(0.25, 0.75)]
