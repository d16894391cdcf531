"""Summary: one pane with the model, its counts, the hyper-parameters and versions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from monitor import Summary
from monitor.records import Hparams, Text
from monitor.windows import Window
from helpers.monitors import live_monitor, model_and_data, monitor_with, small_model


def test_summary_shows_model_counts_hparams_and_versions_in_one_pane():
    model = small_model()
    model[0].requires_grad_(False)
    monitor, sink = monitor_with(Summary(hparams={"batch_size": 64, "lr": 1.0}))
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1), hparams={"lr": 0.1})
    (pane,) = sink.of(Text, "summary")
    total, frozen = sum(p.numel() for p in model.parameters()), 4 * 8 + 8
    assert f"{total:,} ({total - frozen:,} trainable)" in pane.html
    assert "<td><b>lr</b></td><td>0.1</td>" in pane.html and "<td>64</td>" in pane.html
    assert "(3): Linear(in_features=8, out_features=3, bias=True)" in pane.html
    assert torch.__version__ in pane.html and "<td>cpu</td>" in pane.html and "SGD" in pane.html


def test_the_summary_is_written_again_at_the_end_of_an_epoch_that_unfroze_layers():
    model = small_model()
    model[0].requires_grad_(False)
    optimizer = torch.optim.SGD(model[2:].parameters(), lr=0.1)
    monitor, sink = monitor_with(Summary())
    monitor.train_start(model, optimizer)
    monitor.epoch_start(0)
    monitor.epoch_end()  # nothing changed: not written again
    monitor.epoch_start(1)
    optimizer.add_param_group({"params": model[0].requires_grad_(True).parameters(), "lr": 0.01})
    monitor.epoch_end()
    first, second = sink.of(Text, "summary")
    total, frozen = sum(p.numel() for p in model.parameters()), 4 * 8 + 8
    assert f"({total - frozen:,} trainable)" in first.html and "<td>SGD (lr 0.1)</td>" in first.html
    assert f"({total:,} trainable)" in second.html
    assert f"<td>SGD (2 parameter groups: group 0: {total - frozen:,} parameters, lr 0.1; group 1: 40, lr 0.01)</td>" \
        in second.html


def test_a_tensor_learning_rate_is_shown_as_its_value_not_its_float32_noise():
    model = small_model()
    monitor, sink = monitor_with(Summary())
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=torch.tensor(0.05), momentum=0.9))
    assert "<td>SGD (lr 0.05, momentum 0.9)</td>" in sink.of(Text, "summary")[0].html  # was 0.05000000074505806


def test_a_one_cycle_schedule_s_learning_rate_is_shown_from_its_start_up_to_its_peak():
    # The example's summary read "Adam (lr 0.0002)" beside hparams lr=0.005: OneCycleLR's start and its max_lr.
    model = small_model()
    adam = torch.optim.Adam(model.parameters(), lr=0.005)
    torch.optim.lr_scheduler.OneCycleLR(adam, max_lr=0.005, total_steps=100)
    monitor, sink = monitor_with(Summary())
    monitor.train_start(model, adam, hparams={"lr": 0.005})
    assert "<td>Adam (lr 0.0002 up to 0.005)</td>" in sink.of(Text, "summary")[0].html


def test_the_summary_names_each_parameter_group_as_its_learning_rate_curve_with_its_settings():
    # A fine-tuning loop's named groups, their decay, and the lr a warm-up schedule starts from.
    model = small_model()
    optimizer = torch.optim.AdamW([{"params": model[0].parameters(), "name": "lora", "lr": 1e-3},
                                   {"params": model[3].parameters(), "name": "head", "weight_decay": 0.0}],
                                  lr=1e-4, weight_decay=0.01)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: step / 100)  # lr 0 at first
    monitor, sink = monitor_with(Summary())
    monitor.train_start(model, optimizer)
    (pane,) = sink.of(Text, "summary")
    # weight_decay 0 is said beside another group's (AdamW's default is 0.01, not 0)
    assert ("<td>AdamW (2 parameter groups: lora: 40 parameters, base lr 0.001, weight_decay 0.01; head: 27, base lr "
            "0.0001, weight_decay 0)</td>") in pane.html  # the schedule's base: its warm-up starts at 0


def test_several_optimizers_are_each_summarised_with_the_parameters_they_hold():
    # A 50k-word LM's SparseAdam for its embedding beside AdamW for the rest: which held what was unsaid
    model = small_model()
    dense = torch.optim.AdamW(model[3].parameters(), lr=3e-3)
    sparse = torch.optim.SGD(model[0].parameters(), lr=1e-2)
    monitor, sink = monitor_with(Summary())
    monitor.train_start(model, {"dense": dense, "sparse": sparse})
    assert "<td>dense: AdamW (27 parameters, lr 0.003, weight_decay 0.01), sparse: SGD (40 parameters, lr 0.01)</td>" in \
        sink.of(Text, "summary")[0].html


def test_the_summary_shows_momentum_and_betas_where_they_are_not_the_optimizer_s_defaults():
    # What a GAN run is told apart by: Adam's betas (0.5, 0.999) against the default (0.9, 0.999).
    model = small_model()
    for optimizer, shown in ((torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999)),
                              "Adam (lr 0.0002, betas (0.5, 0.999))"),
                             (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                              "SGD (lr 0.1, momentum 0.9)"),
                             (torch.optim.Adam(model.parameters()), "Adam (lr 0.001)")):
        monitor, sink = monitor_with(Summary())
        monitor.train_start(model, optimizer)
        assert f"<td>{shown}</td>" in sink.of(Text, "summary")[0].html


def test_a_mixed_precision_run_is_told_apart_from_its_float32_twin_by_its_grad_scaler():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(Summary())
    monitor.train_start(model, optimizer, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**40, growth_interval=3))
    assert "<td><b>mixed precision</b></td><td>GradScaler (init_scale 1099511627776, x2 every 3 steps without inf, x0.5 at " \
        "one)</td>" in sink.of(Text, "summary")[0].html
    monitor, sink = monitor_with(Summary())
    monitor.train_start(model, optimizer, scaler=torch.amp.GradScaler("cpu", enabled=False))  # bf16: none used
    assert "mixed precision" not in sink.of(Text, "summary")[0].html


def test_the_summary_says_which_parts_are_compiled_and_by_which_backend():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(Summary())
    monitor.train_start(torch.compile(model, backend="eager"), optimizer)
    assert "<td><b>compiled</b></td><td>the whole model (eager)</td>" in sink.of(Text, "summary")[0].html
    model[0] = torch.compile(model[0], backend="aot_eager")
    monitor, sink = monitor_with(Summary())
    monitor.train_start(model, optimizer)
    assert "<td><b>compiled</b></td><td>0 (aot_eager)</td>" in sink.of(Text, "summary")[0].html
    monitor, sink = monitor_with(Summary())
    monitor.train_start(small_model(), optimizer)
    assert "compiled" not in sink.of(Text, "summary")[0].html


def test_a_model_pruned_in_an_epoch_is_summarised_again_with_its_weights_masked():
    # A compression researcher pruned 5,705 of 9,604 weights: the pane said 9,604 before and after.
    from torch.nn.utils import prune

    model = small_model()
    monitor, sink = monitor_with(Summary())
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for epoch in monitor.epochs(2):
        monitor.step_end(loss=1.0)
        if epoch == 0:
            prune.l1_unstructured(model[0], "weight", amount=0.5)
    panes = [r.html for r in sink.of(Text, "summary")]
    count = model[0].weight_mask.numel()
    assert len(panes) == 2 and "pruned" not in panes[0]
    assert f"<td><b>pruned</b></td><td>{count // 2:,} of {count:,} weights masked (50.0%; torch.nn.utils.prune, " \
           "1 tensors)</td>" in panes[1]


def test_hparams_from_argparse_a_dataclass_config_or_nested_dicts_are_taken_flat():
    # A Trainer passed hparams=args (TypeError: 'Namespace' object is not iterable, from inside
    # train_start) and a nested config, shown as dict reprs and out of reach of runs --where.
    import argparse
    import dataclasses

    @dataclasses.dataclass
    class Optim:
        lr: float = 0.05
        betas: tuple = (0.9, 0.99)

    @dataclasses.dataclass
    class Config:
        width: int = 32
        optim: Optim = dataclasses.field(default_factory=Optim)

    model = small_model()
    monitor, sink = monitor_with(Summary(hparams=argparse.Namespace(seed=1, data={"batch_size": 64})))
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1), hparams=Config())
    (record,) = sink.of(Hparams)
    assert record.hparams == {"seed": 1, "data.batch_size": 64, "width": 32, "optim.lr": 0.05,
                              "optim.betas": "(0.9, 0.99)"}
    with pytest.raises(TypeError, match=r"hparams must be a mapping of name to value \(or an argparse.Namespace, "
                                        r"a dataclass\), got list"):
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1), hparams=[("lr", 0.1)])


def test_an_ema_copy_inside_the_model_is_not_counted_as_trainable():
    class WithEma(nn.Module):  # a loop that keeps its EMA on the model, to save and load it with it
        def __init__(self) -> None:
            super().__init__()
            self.student = small_model()
            self.ema = torch.optim.swa_utils.AveragedModel(self.student)  # its copies require grad too

    model = WithEma()
    monitor, sink = monitor_with(Summary())
    monitor.train_start(model, torch.optim.SGD(model.student.parameters(), lr=0.1))
    student = sum(p.numel() for p in model.student.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,} ({student:,} trainable)" in sink.of(Text, "summary")[0].html


def test_summary_escapes_everything_the_user_supplied():
    class Odd(nn.Module):
        def extra_repr(self):
            return "<script>alert(1)</script>"

    monitor, sink = monitor_with(Summary(hparams={"<b>note</b>": "<i>&</i>"}))
    monitor.train_start(Odd())
    html = sink.of(Text, "summary")[0].html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&lt;b&gt;note&lt;/b&gt;" in html and "&lt;i&gt;&amp;&lt;/i&gt;" in html


def test_a_lazy_model_is_summarised_with_its_parameters_still_to_come():
    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 3))
    monitor, sink = monitor_with(Summary())
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert "27 (27 trainable), and 2 lazy tensors not yet initialized" in sink.of(Text, "summary")[0].html


def test_numpy_and_tensor_hyper_parameters_are_numbers_in_the_run_log():
    from monitor.entries import encode
    from monitor.records import Hparams

    monitor, sink = monitor_with(Summary(hparams={"lr": np.float32(0.1), "layers": np.int64(3),
                                                  "decay": torch.tensor(0.25), "shape": torch.ones(2)}))
    monitor.train_start(small_model())
    monitor.train_end()
    hparams = encode(sink.of(Hparams)[0])["hparams"]
    assert hparams == {"lr": 0.1, "layers": 3, "decay": 0.25, "shape": "tensor([1., 1.])"}  # 0.1, not 0.100000001
    assert type(hparams["layers"]) is int


# --- on a real server ---------------------------------------------------------------------------
def test_the_summary_pane_arrives(visdom_server, read_window_raw, tmp_path):
    model, _, _ = model_and_data()
    with live_monitor(visdom_server, "live-summary", tmp_path, Summary(hparams={"batch_size": 12})) as monitor:
        monitor.train_start(model, hparams={"lr": 0.1})
        assert monitor.flush(timeout=10)
    html = read_window_raw(visdom_server, "live-summary", "summary")["content"]
    assert "(1): Linear(in_features=16, out_features=8, bias=True)" in html
    assert "<td><b>batch_size</b></td><td>12</td>" in html and "<td><b>lr</b></td><td>0.1</td>" in html


def test_a_run_ends_with_its_hparams_and_final_metrics_in_a_pane_and_the_run_log(visdom_server, tmp_path,
                                                                               read_window_raw):
    import json

    from monitor import Monitor, Summary
    from monitor.runlog import RunLog
    from helpers.monitors import small_model

    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor([Summary(hparams={"batch_size": 16, "note": "<baseline>"})], env="hparams-run",
                 port=visdom_server.port, run_dir=tmp_path) as monitor:
        monitor.train_start(model, optimizer, hparams={"lr": 0.1, "layers": [4, 8]})
        monitor.validation_end({"accuracy": torch.tensor(0.75), "confusion": [[1, 0], [0, 1]]})
        monitor.train_end()
        assert monitor.flush()
        html = read_window_raw(visdom_server, "hparams-run", "hparams")["content"]
    assert "&lt;baseline&gt;" in html and "accuracy" in html and "confusion" not in html
    entries = [json.loads(line) for line in (tmp_path / RunLog.FILENAME).open()]
    at_start, entry = [e for e in entries if e["k"] == "hparams"]  # a killed run would keep the first
    assert entry["hparams"] == at_start["hparams"] == {"batch_size": 16, "note": "<baseline>", "lr": 0.1,
                                                       "layers": "[4, 8]"}
    assert (at_start["metrics"], entry["metrics"]) == ({}, {"accuracy": 0.75})


def test_the_final_metrics_are_the_latest_passed_even_when_epoch_end_passes_none():
    from monitor.records import Hparams
    from helpers.monitors import monitor_with

    model = small_model()
    monitor, sink = monitor_with(Summary(hparams={"lr": 0.1}))
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for epoch in monitor.epochs(2):  # calls epoch_end() itself, without metrics
        monitor.validation_end({"acc32": np.float32(0.5 + epoch / 4), "n64": np.int64(3), "arr": np.array(0.25),
                                "t": torch.tensor(0.75), "note": "fine"})
    monitor.epoch_end({"train_loss": 0.125})  # the README's loop ends its epoch with its own metrics
    monitor.train_end()
    record = [r for r in sink.records if isinstance(r, Hparams)][-1]
    assert record.metrics == {"acc32": 0.75, "n64": 3.0, "arr": 0.25, "t": 0.75, "train_loss": 0.125}


def test_train_end_called_again_with_no_step_since_keeps_the_final_metrics():
    from monitor.records import Hparams
    from helpers.monitors import monitor_with

    model = small_model()
    monitor, sink = monitor_with(Summary(hparams={"lr": 0.1}))
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
    monitor.step_end(loss=0.5)
    monitor.validation_end({"accuracy": 0.9})
    monitor.train_end()
    monitor.train_end()  # a notebook's last cell run again
    assert [r.metrics for r in sink.records if isinstance(r, Hparams)] == [{}, {"accuracy": 0.9}]
    monitor.validation_end({"test accuracy": 0.95})  # a test set after training: the next end records it
    monitor.train_end()
    assert [r.metrics for r in sink.records if isinstance(r, Hparams)][-1] == {"accuracy": 0.9, "test accuracy": 0.95}
    monitor.step_end(loss=0.4)  # trained on, then ended again: the new end counts
    monitor.validation_end({"accuracy": 0.97})
    monitor.train_end()
    assert [r.metrics for r in sink.records if isinstance(r, Hparams)][-1] == {"accuracy": 0.97,
                                                                                "test accuracy": 0.95}


def test_test_metrics_the_loop_gives_log_hparams_stay_in_the_run_s_final_record(tmp_path):
    """A k-fold script's last line, log.hparams(..., {"test_loss": ...}), was replaced at train_end by
    Summary's record of the validation metrics alone: runs list showed test_loss as -."""
    from monitor import Monitor, Scalars
    from monitor.runs import described

    model = small_model()
    with Monitor([Summary(), Scalars()], env="fold3", run_dir=tmp_path, port=1) as monitor:  # no server: the log
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1), hparams={"fold": 3})
        monitor.step_end(loss=0.6)
        monitor.validation_end({"val_loss": 0.54, "val_acc": 0.825})
        monitor.log.hparams({"fold": 3}, {"test_loss": torch.tensor(0.49), "test_acc": 0.815})
    run = described(tmp_path)
    assert run.hparams == {"fold": 3}
    finals = {name: last for name, (last, _) in run.metrics.items() if "/" not in name}  # those given with hparams
    assert finals == {"val_loss": 0.54, "val_acc": 0.825, "test_loss": pytest.approx(0.49), "test_acc": 0.815}

    from monitor.records import Hparams
    monitor, sink = monitor_with(Summary(hparams={"lr": 0.1}))
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
    monitor.validation_end({"val_loss": 0.6})
    monitor.log.hparams({"lr": 0.1}, {"val_loss": 0.6, "note": 1.0})  # an interim record, each epoch
    monitor.validation_end({"val_loss": 0.5})  # later: the latest value counts
    monitor.train_end()
    assert [r for r in sink.records if isinstance(r, Hparams)][-1].metrics == {"val_loss": 0.5, "note": 1.0}
    # The test set after training, the usual order: its metrics join the validation's record.
    monitor.log.hparams({"lr": 0.1}, {"test_loss": 0.45})
    assert [r for r in sink.records if isinstance(r, Hparams)][-1].metrics == {"val_loss": 0.5, "note": 1.0,
                                                                                 "test_loss": 0.45}
    monitor.log.hparams({"lr": 0.2}, {"test_loss": 0.4})  # other hyper-parameters: a row of their own
    assert [r for r in sink.records if isinstance(r, Hparams)][-1].metrics == {"test_loss": 0.4}

    # A Lightning user's loop: the epoch's training mean through epoch_end beside the validation's
    # loss (the final record's loss was the training mean), and the test metrics given with some of
    # the hparams (they made a second row, and runs lost batch_size).
    monitor, sink = monitor_with(Summary())
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1), hparams={"lr": 0.05, "batch_size": 32})
    monitor.validation_end({"loss": 1.62, "accuracy": 0.34})
    monitor.epoch_end({"loss": 1.18})  # on_epoch=True: the training loss's epoch mean
    monitor.train_end()
    record = [r for r in sink.records if isinstance(r, Hparams)][-1]
    assert record.metrics == {"loss": 1.62, "accuracy": 0.34}
    monitor.log.hparams({"lr": 0.05}, {"test_loss": 1.36})
    record = [r for r in sink.records if isinstance(r, Hparams)][-1]
    assert record.hparams == {"lr": 0.05, "batch_size": 32} and record.metrics == {"loss": 1.62, "accuracy": 0.34,
                                                                                  "test_loss": 1.36}
    monitor.log.hparams({}, {"test_accuracy": 0.43})  # none: the run's too
    assert [r for r in sink.records if isinstance(r, Hparams)][-1].hparams == {"lr": 0.05, "batch_size": 32}

    with Monitor([Summary(), Scalars()], env="fold4", run_dir=tmp_path / "after", port=1) as monitor:
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1), hparams={"fold": 4})
        monitor.step_end(loss=0.6)
        monitor.validation_end({"val_loss": 0.54})
        monitor.train_end()
        monitor.log.hparams({"fold": 4}, {"test_loss": 0.49})
    finals = {name: last for name, (last, _) in described(tmp_path / "after").metrics.items() if "/" not in name}
    assert finals == {"val_loss": 0.54, "test_loss": 0.49}


def test_a_finished_run_s_test_metrics_added_by_another_process_join_its_record(visdom_server, tmp_path,
                                                                                 read_window_raw):
    # A deploy script, after training: the int8 model's accuracy added to the finished run through a
    # writer continuing it. Its record of {} made the run's hparams {}: --where seed=2 found nothing.
    from monitor import Monitor, Scalars, SummaryWriter
    from monitor.runs import described

    model = small_model()
    with Monitor([Summary(), Scalars()], env="deployed", run_dir=tmp_path, port=visdom_server.port) as monitor:
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1), hparams={"seed": 2})
        monitor.step_end(loss=0.6)
        monitor.validation_end({"accuracy": 0.79})
    with SummaryWriter(tmp_path, port=visdom_server.port, purge_step=2) as writer:  # the step after the last
        writer.log.hparams({}, {"int8_accuracy": 0.78})
    run = described(tmp_path)
    assert run.hparams == {"seed": 2}
    assert {n: last for n, (last, _) in run.metrics.items() if "/" not in n} == {"accuracy": 0.79, "int8_accuracy": 0.78}
    html = read_window_raw(visdom_server, "deployed", "hparams")["content"]
    assert "int8_accuracy" in html and "Trials" not in html  # one row, the run's


@pytest.mark.parametrize("summary", [True, False])
def test_a_second_train_start_for_another_optimizer_keeps_the_run_s_hparams_and_records_them_once(summary):
    model = small_model()
    adam = torch.optim.Adam(model.parameters())
    monitor, sink = monitor_with(*([Summary(hparams={"nu": 0.01})] if summary else []))
    monitor.train_start(model, adam, hparams={"adam_steps": 300})
    monitor.step_end(loss=1.0)
    monitor.train_start(model, torch.optim.LBFGS(model.parameters()))  # the switch, given no hparams
    assert monitor.state.hparams == {"adam_steps": 300}
    expected = {"nu": 0.01, "adam_steps": 300} if summary else {"adam_steps": 300}
    assert [(r.x, r.hparams) for r in sink.of(Hparams)] == [(0, expected)]
    monitor.train_start(model, adam, hparams={"adam_steps": 200})  # given anew: recorded anew
    assert [r.hparams["adam_steps"] for r in sink.of(Hparams)] == [300, 200]
    head = torch.nn.Linear(3, 2)  # a linear probe after pretraining: its hparams add to the run's
    monitor.train_start(head, torch.optim.SGD(head.parameters(), lr=0.1), hparams={"probe_lr": 0.1})
    assert monitor.state.hparams == {"adam_steps": 200, "probe_lr": 0.1}
    assert sink.of(Hparams)[-1].hparams == {**expected, "adam_steps": 200, "probe_lr": 0.1}
    window = Window("hparams", 1000)  # one run: one row, its latest set
    for record in sink.of(Hparams):
        window.apply({"k": "hparams", "win": "hparams", "x": record.x, "hparams": record.hparams, "metrics": {}})
    assert list(window.trials.values())[0]["hparams"]["probe_lr"] == 0.1 and "Trials" not in window.content["html"]


@pytest.mark.parametrize("error, said", [(RuntimeError("CUDA error: an illegal memory access"),
                                          "crashed at step 2: RuntimeError: CUDA error: an illegal memory access"),
                                         (KeyboardInterrupt(), "interrupted at step 2: KeyboardInterrupt")])
def test_the_summary_pane_says_how_a_run_that_did_not_finish_ended(error, said):
    # A search's crashed and pruned trials looked, on their own pages, like short finished runs.
    model = small_model()
    monitor, sink = monitor_with(Summary())
    with pytest.raises(type(error)):
        with monitor:
            monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
            monitor.step_end(loss=1.0)
            monitor.step_end(loss=1.0)
            raise error
    assert said in sink.of(Text, "summary")[-1].html
