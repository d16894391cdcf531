"""The Monitor: hooks, loop state and what it lets go of; callbacks together on a real server."""
from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

from monitor import Callback, GradNorms, Images, LearningRate, Monitor, Scalars
from monitor.imaging import encode_grid
from monitor.log import NullSink
from monitor.windows import float32_digits
from helpers.monitors import grid_taken, live_monitor, model_and_data, monitor_with, shown_grid


def test_the_monitor_keeps_no_batch_loss_or_metric_alive_after_step_end():
    seen = []

    class Peek(Callback):
        def on_step_end(self, state, log):
            seen.append((id(state.loss), id(state.inputs)))

    monitor, _ = monitor_with(Peek())
    inputs = torch.rand(4, 3)
    loss = inputs.sum()
    weight = torch.ones(3, requires_grad=True)
    error = (inputs * weight).abs().mean()  # a metric with its graph, as a loop computes it
    monitor.step_end(loss=loss, inputs=inputs, metrics={"error": error})
    assert seen == [(id(loss), id(inputs))]  # the callbacks see this step's
    batch, metric = weakref.ref(inputs), weakref.ref(error)
    del inputs, loss, error
    assert batch() is None and metric() is None  # the metric's graph went with it, not at the next step_end
    assert (monitor.state.loss, monitor.state.inputs, monitor.state.metrics) == (None, None, {})


# --- on a real server ---------------------------------------------------------------------------
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
            grid_taken(monitor)  # a grid each step, not one skipped for the sink
            monitor.step_end(loss=loss_buffer, inputs=batch_buffer)
            logged_losses.append(loss_buffer.item())
            loss_buffer.fill_(-1.0)  # changed in place right after logging
        for p in model.parameters():
            p.grad.zero_()
        batch_buffer.fill_(0.0)
        assert monitor.flush(timeout=10)
    assert read_window(visdom_server, "live-snapshots", "loss")["train"] == ([1, 2, 3], float32_digits(logged_losses))
    assert read_window(visdom_server, "live-snapshots", "grad norm")["total"][1] == pytest.approx(
        logged_total, rel=1e-5)
    shown = shown_grid(read_window_raw(visdom_server, "live-snapshots", "inputs"))
    assert shown == encode_grid(x[:2] + 2, heading="step 3")  # the latest step's batch, headed whole


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
    assert read_window(visdom_server, "live-scalars", "loss") == {"train": (steps, float32_digits(losses))}
    assert read_window(visdom_server, "live-scalars", "accuracy") == {
        "train": (steps, float32_digits(accuracies)), "validation": ([6, 12], validation)}
    assert read_window(visdom_server, "live-scalars", "learning rate") == {"lr": (steps, rates)}


def test_breaking_out_of_monitor_epochs_still_ends_the_last_epoch_at_train_end():
    ended = []

    class Ends(Callback):
        def on_epoch_end(self, state, log):
            ended.append(state.epoch)

    monitor, _ = monitor_with(Ends())
    monitor.train_start()
    for epoch in monitor.epochs(5):
        monitor.step_end()
        if epoch == 1:
            break  # early stopping
    monitor.train_end()
    assert ended == [0, 1]


def test_an_epoch_a_loop_failed_in_is_not_ended():
    ended = []

    class Ends(Callback):
        def on_epoch_end(self, state, log):
            ended.append(state.epoch)

    monitor, _ = monitor_with(Ends())
    with pytest.raises(RuntimeError):
        with monitor:
            monitor.train_start()
            for _ in monitor.epochs(5):
                raise RuntimeError("a bug in the loop")
    assert ended == []


def test_a_closed_monitor_entered_again_or_started_again_says_so_instead_of_dropping_the_run():
    monitor, sink = monitor_with(Scalars())
    with monitor:
        monitor.step_end(loss=1.0)
        with pytest.raises(RuntimeError, match="is in a `with` block already, whose end closes it: enter it once"):
            with monitor:
                pass
        monitor.step_end(loss=1.5)  # the outer block goes on
    assert sink.points("loss")["train"] == [(1, 1.0), (2, 1.5)]
    closed = "this Monitor of env .* cannot log any more, it was closed: what it logged now would be dropped"
    with pytest.raises(RuntimeError, match=closed):
        with monitor:
            monitor.step_end(loss=2.0)
    with pytest.raises(RuntimeError, match=closed):
        monitor.train_start()
    # A notebook's training cell run again after its `with` cell: every hook says so, where 64
    # steps were trained with nothing logged, said once as a dropped record, and flush() True.
    for hook in (monitor.epoch_start, monitor.after_backward, lambda: monitor.step_end(loss=3.0),
                 lambda: monitor.validation_end({"loss": 3.0}), monitor.epoch_end):
        with pytest.raises(RuntimeError, match=closed + r".* call its hooks without `with` and close\(\) it after "
                                                        r"the last"):
            hook()
    monitor.train_end()  # as close() did already: nothing to say
    assert sink.points("loss")["train"] == [(1, 1.0), (2, 1.5)]


def test_a_thread_the_loop_did_not_join_logging_after_the_with_block_is_told_so(tmp_path):
    # A background evaluation finished after the run's end: the advice spoke of notebook cells.
    import threading

    with Monitor([Scalars()], env="late", port=1, run_dir=tmp_path, timeout=0.2) as monitor:
        monitor.step_end(loss=1.0)
    raised = []
    evaluation = threading.Thread(target=lambda: raised.append(_raised(monitor.validation_end, {"loss": 0.5})),
                                  name="eval-worker")
    evaluation.start()
    evaluation.join()
    assert "(a thread of its own, 'eval-worker', that the loop did not join before the end of its `with` block?)" \
        in raised[0]


def _raised(call, *args) -> str:
    try:
        call(*args)
    except RuntimeError as error:
        return str(error)
    return ""


def test_a_monitor_replaced_by_a_newer_one_of_its_env_refuses_a_cell_run_on_it_again(visdom_server, tmp_path):
    from monitor import Monitor

    options = {"env": "replaced", "port": visdom_server.port, "run_dir": tmp_path / "runs"}
    old = Monitor([Scalars()], **options)
    new = Monitor([Scalars()], **options)  # the setup cell run again, the old object still held
    with pytest.raises(RuntimeError, match="cannot log any more, a newer Monitor of its env in this process "
                                           "replaced it"):
        with old:
            old.train_start()
    for hook in (old.after_backward, lambda: old.step_end(loss=0.5), old.epoch_end):  # the per-step ones too
        with pytest.raises(RuntimeError, match="a newer Monitor of its env in this process replaced it"):
            hook()
    with new:
        new.train_start()
        new.step_end(loss=0.5)


@pytest.mark.parametrize("form", ["with", "close"])
def test_a_train_end_that_raises_still_closes_the_run(tmp_path, form):
    # A Checkpoint's last save on a full disk raises from train_end: the run log must still end.
    from monitor import Monitor
    from monitor.runs import described

    class FailsAtEnd(Callback):
        def on_train_end(self, state, log):
            raise OSError("No space left on device")

    monitor = Monitor([Scalars(), FailsAtEnd()], env="ends", run_dir=tmp_path, port=1, timeout=0.2,
                      raise_errors=True)
    with pytest.raises(OSError, match="No space left"):
        if form == "with":
            with monitor:
                monitor.train_start()
                monitor.step_end(loss=1.0)
        else:
            monitor.train_start()
            monitor.step_end(loss=1.0)
            monitor.close()
    assert monitor.sink.pending == 0 and described(tmp_path).status in ("finished", "crashed")


class _LoggingDataset(torch.utils.data.Dataset):
    """A user's dataset that holds the run's logger, to log from __getitem__."""

    def __init__(self, logger):
        self.logger = logger

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.zeros(2)


def _train_in_spawned_process(rank, logger):
    logger.add_scalar("loss", 1.0, rank)


@pytest.mark.parametrize("how", ["mp.spawn", "spawned DataLoader worker"])
@pytest.mark.parametrize("kind", ["Monitor", "SummaryWriter"])
def test_a_monitor_or_writer_sent_to_another_process_is_refused_saying_where_to_make_it(tmp_path, how, kind):
    # Pickled into a spawned process, its sink would deliver nothing: a clear error instead of
    # "cannot pickle '_thread.lock' object".
    from monitor import Monitor, SummaryWriter
    logger = Monitor([Scalars()], env="sent", run_dir=tmp_path, port=1, timeout=0.2) if kind == "Monitor" \
        else SummaryWriter(tmp_path / "sent", port=1, timeout=0.2)
    expected = r"sink \(env '(\w+_)?sent'\) cannot be pickled or copied.*inside the function torch.multiprocessing.spawn runs"  # _: a log_dir apart
    try:
        with pytest.raises(TypeError, match=expected):
            if how == "mp.spawn":
                torch.multiprocessing.spawn(_train_in_spawned_process, args=(logger,), nprocs=1)
            else:
                next(iter(torch.utils.data.DataLoader(_LoggingDataset(logger), num_workers=1,
                                                      multiprocessing_context="spawn")))
    finally:
        logger.close()


def test_train_start_given_another_model_says_once_that_the_run_goes_on(caplog):
    """One Monitor for every fold of a cross-validation: the folds were one run, silently."""
    monitor, _ = monitor_with(Scalars())
    model = nn.Linear(2, 1)
    with caplog.at_level("WARNING", logger="monitor"):
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
        monitor.step_end(loss=1.0)
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))  # the same model again: a resume
        assert caplog.text == ""
        for fold in range(2):
            model = nn.Linear(2, 1)
            monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "train_start was given another model: it goes on with this run, from step 1" in said[0]


def test_an_ema_copy_given_to_train_start_is_told_what_to_give_instead(caplog):
    model = nn.Linear(2, 1)
    ema = torch.optim.swa_utils.AveragedModel(model)
    monitor, _ = monitor_with()
    with caplog.at_level("WARNING", logger="monitor"):
        monitor.train_start(ema, torch.optim.SGD(model.parameters(), lr=0.1))
    assert [r.getMessage() for r in caplog.records] == [
        "monitor: train_start was given an AveragedModel (an EMA or SWA copy): give it the model the optimizer "
        "trains, validate the copy with validation_end(..., trace='ema') and keep it in Checkpoint(extras=lambda: "
        "{'ema': ema.state_dict()}) (reported once)"]


@pytest.mark.parametrize("metrics", [0.5, "accuracy", [("accuracy", 0.9)], torch.tensor(0.5)])
def test_metrics_that_are_not_a_mapping_are_refused_before_the_step_is_counted(metrics):
    monitor, sink = monitor_with(Scalars(smoothing=0))
    monitor.train_start()
    for hook in (lambda: monitor.step_end(loss=0.9, metrics=metrics), lambda: monitor.epoch_end(metrics),
                 lambda: monitor.validation_end(metrics)):
        with pytest.raises(TypeError, match=r"metrics must be a mapping of name to number, e\.g\. "
                                            rf"\{{'accuracy': 0\.9\}}, got {type(metrics).__name__}"):
            hook()
    monitor.step_end(loss=0.5)
    assert (monitor.state.step, monitor.state.batch, monitor.state.loss) == (1, 1, None)
    assert sink.points("loss") == {"train": [(1, 0.5)]}


def test_a_run_replaced_while_the_dashboard_is_down_names_where_its_log_is_kept(tmp_path, caplog):
    from helpers.probes import free_port
    from monitor import Monitor

    options = {"env": "replaced-offline", "port": free_port(), "run_dir": tmp_path / "runs", "timeout": 0.2}
    with caplog.at_level("WARNING", logger="monitor"):
        old = Monitor([Scalars()], **options)
        old.step_end(loss=0.5)
        old.flush(timeout=0.5)
        new = Monitor([Scalars()], **options)  # the setup cell run again while the server is down
        new.close(timeout=0.5)
    kept = tmp_path / "runs" / "earlier" / f"{old.sink.run_id}.jsonl"
    hints = [r.getMessage() for r in caplog.records if "monitor replay" in r.getMessage()]
    replay = f"monitor replay {kept} --env replaced-offline-{old.sink.run_id[:8]} --port {options['port']}"
    assert kept.exists() and any(f"{replay}`" in hint for hint in hints), hints


def test_steps_yields_the_steps_done_until_count_and_counts_only_iterations_that_end_a_step():
    from monitor.log import NullSink

    with Monitor([], sink=NullSink(), raise_errors=True) as monitor:
        seen = []
        for done in monitor.steps(3):
            assert monitor.in_steps
            seen.append(done)
            if len(seen) != 2:  # the second iteration ends no step: a replay buffer still filling
                monitor.step_end(loss=1.0)
        assert seen == [0, 1, 1, 2] and not monitor.in_steps
        with pytest.raises(ValueError, match="count must be an int >= 0, got -1"):
            next(monitor.steps(-1))


def test_a_steps_loop_that_takes_the_number_for_its_environment_steps_is_told_once_it_never_moves(caplog):
    # CleanRL's `for global_step in range(total)` made monitor.steps(total): its learning_starts
    # guard was never true, the loop ran 2.9M iterations at 0 and said nothing.
    from monitor.log import NullSink

    with caplog.at_level("WARNING", logger="monitor"), Monitor([], sink=NullSink(), raise_errors=True) as monitor:
        for iterations, global_step in enumerate(monitor.steps(100)):
            if global_step > 50:  # learning_starts: an update, never reached
                monitor.step_end(loss=1.0)
            if iterations == 25_000:
                break
    said = [r.getMessage() for r in caplog.records if "monitor.steps(100) yielded 0 10,000 times" in r.getMessage()]
    assert len(said) == 1 and "for global_step in range(total)" in said[0]


def test_a_monitor_shows_its_env_s_dashboard_page_and_its_step_in_a_notebook_cell_s_output(tmp_path):
    from monitor.log import NullSink

    monitor = Monitor([], env="repr", port=1, run_dir=tmp_path)  # no server: the page it would be on
    monitor.step_end(loss=1.0)
    assert repr(monitor) == "<Monitor of env 'repr' at http://127.0.0.1:1/env/repr, step 1>"
    assert monitor._repr_html_() == ('<a href="http://127.0.0.1:1/env/repr" target="_blank">&lt;Monitor of env '
                                     '&#x27;repr&#x27; at http://127.0.0.1:1/env/repr, step 1&gt;</a>')  # Jupyter's link
    monitor.close(timeout=0)
    assert repr(monitor).endswith(", closed>")
    assert repr(Monitor([], sink=NullSink())).startswith("<Monitor of env ")


def test_the_package_s_modules_are_reached_from_import_monitor_as_readme_writes_them():
    # README's `monitor.runs.exported("runs/my-run")` raised AttributeError after `import monitor`.
    import subprocess
    import sys
    from pathlib import Path

    code = ("import monitor; monitor.runs.exported; monitor.replay.replay; monitor.checkpoint.load_checkpoint\n"
            "try:\n    monitor.nothing\nexcept AttributeError as error:\n    print(error)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0 and done.stdout == "module 'monitor' has no attribute 'nothing'\n", done.stderr


def _cells(monitor, model, optimizer, loader, seen, epochs=3, stop_at=None):
    """A notebook's training cell: monitor.epochs over monitor.batches, the stop button pressed
    after step ``stop_at``."""
    for epoch in monitor.epochs(epochs):
        for (x,) in monitor.batches(loader):
            seen.append((epoch, x.flatten().tolist()))
            model(x).pow(2).mean().backward()
            monitor.after_backward()
            optimizer.step()
            optimizer.zero_grad()
            monitor.step_end(loss=1.0)
            if monitor.state.step == stop_at:
                raise KeyboardInterrupt


def test_a_notebook_cell_of_monitor_epochs_run_again_goes_on_with_the_run_s_epochs_as_a_resume_does(caplog):
    """Run again after the stop button (step 5, in epoch 1), the cell trained three whole epochs
    more, numbered 0, 1, 2 again, leaving epoch 1's other batches out; after a kernel restart
    the resume trained the rest of epoch 1 and epoch 2."""
    from torch.utils.data import DataLoader, TensorDataset

    def kernel():
        torch.manual_seed(0)
        loader = DataLoader(TensorDataset(torch.arange(8.0).unsqueeze(1)), batch_size=2, shuffle=True)
        model = torch.nn.Linear(1, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        monitor = Monitor([], sink=NullSink(), raise_errors=True)
        monitor.train_start(model, optimizer)
        return monitor, model, optimizer, loader

    straight: list = []
    monitor, model, optimizer, loader = kernel()
    _cells(monitor, model, optimizer, loader, straight)
    expected = [p.detach().clone() for p in model.parameters()]
    seen: list = []
    monitor, model, optimizer, loader = kernel()
    with pytest.raises(KeyboardInterrupt):
        _cells(monitor, model, optimizer, loader, seen, stop_at=5)
    with caplog.at_level("WARNING", logger="monitor"):
        _cells(monitor, model, optimizer, loader, seen)  # the cell run again
    assert seen == straight and monitor.state.step == 12
    assert "monitor: loading and dropping the 1 batch done before the loop stopped" in caplog.text
    caplog.clear()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), expected))
    with caplog.at_level("WARNING", logger="monitor"):
        _cells(monitor, model, optimizer, loader, seen)  # and again: no epoch left
        _cells(monitor, model, optimizer, loader, seen)
    assert len(seen) == len(straight) and [r.getMessage() for r in caplog.records] == [
        "monitor: monitor.epochs(3) has no epoch left: the run has done 3, and monitor.epochs counts the run's "
        "epochs (a cell run again, or a later phase after train_start again, goes on with them, as a resumed run "
        "does); ask for more, monitor.epochs(6) (reported once)"]
    _cells(monitor, model, optimizer, loader, seen, epochs=4)
    assert {epoch for epoch, _ in seen[len(straight):]} == {3} and monitor.state.step == 16


def test_epoch_start_going_back_to_an_epoch_the_run_trained_in_is_said_once(caplog):
    # A notebook's `for epoch in range(3): monitor.epoch_start(epoch)` cell run again: epochs 0..2
    # once more, Scalars(x="epoch") drawing over the first ones, checkpoints numbered so.
    monitor = Monitor([], sink=NullSink(), raise_errors=True)
    monitor.train_start()
    with caplog.at_level("WARNING", logger="monitor"):
        for _ in range(2):  # the cell, twice
            for epoch in range(3):
                monitor.epoch_start(epoch)
                monitor.step_end(loss=1.0)
                monitor.epoch_end()
    assert [r.getMessage() for r in caplog.records] == [
        "monitor: epoch_start(0) goes back from epoch 2, which this run has trained in: its epochs' points and "
        "checkpoints take the numbers given again; epoch_start() with no number counts on (a notebook's training "
        "cell run again), as monitor.epochs(n) does (reported once)"]


def test_monitors_left_open_are_closed_together_at_the_exit(monkeypatch):
    # A federated simulation's 9 Monitors, the dashboard hung: closed in turn, the exit took 22 s.
    import threading
    import weakref

    import monitor.core as core

    together = threading.Barrier(3, timeout=10)  # passes only when all three closes are under way at once

    class SlowDashboard(NullSink):
        closed = False

        def close(self, timeout=10.0) -> bool:
            together.wait()
            self.closed = True
            return True

    monkeypatch.setattr(core, "_unclosed", weakref.WeakSet())
    monitors = [Monitor([Scalars()], sink=SlowDashboard()) for _ in range(3)]
    for monitor in monitors:
        monitor.step_end(loss=1.0)
    core._close_unclosed()
    assert all(monitor.sink.closed for monitor in monitors)
