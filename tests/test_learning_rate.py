"""LearningRate: the rate each step used, per parameter group."""
from __future__ import annotations


import logging

import pytest
import torch

from monitor import LearningRate
from helpers.monitors import monitor_with, small_model


def test_learning_rate_shows_the_rate_each_step_used_even_when_the_scheduler_steps_first():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    monitor, sink = monitor_with(LearningRate())
    monitor.train_start(model, optimizer)
    used = []
    for _ in range(4):
        monitor.after_backward()
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        monitor.step_end()
    assert used == [0.1, 0.1, 0.05, 0.05]
    assert sink.points("learning rate") == {"lr": [(1, 0.1), (2, 0.1), (3, 0.05), (4, 0.05)]}


def test_learning_rate_is_read_at_step_end_in_a_loop_without_after_backward():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    monitor, sink = monitor_with(LearningRate())
    monitor.train_start(model, optimizer)
    for _ in range(4):
        monitor.step_end()
        optimizer.step()
        scheduler.step()
    assert sink.points("learning rate") == {"lr": [(1, 0.1), (2, 0.1), (3, 0.05), (4, 0.05)]}


def test_learning_rate_has_a_trace_per_group_named_by_number_or_by_the_groups_name():
    model = small_model()
    numbered = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                                {"params": model[3].parameters()}], lr=0.01)
    named = torch.optim.SGD([{"params": model[0].parameters(), "name": "backbone"},
                             {"params": model[3].parameters(), "name": "head", "lr": 0.5}], lr=0.01)
    for optimizer, traces in ((numbered, {"group 0": 0.1, "group 1": 0.01}),
                              (named, {"backbone": 0.01, "head": 0.5})):
        monitor, sink = monitor_with(LearningRate(every=2))
        monitor.train_start(model, optimizer)
        for _ in range(3):
            monitor.step_end()
        assert sink.points("learning rate") == {t: [(1, lr), (3, lr)] for t, lr in traces.items()}


def test_learning_rate_names_the_groups_of_an_optimizer_given_at_a_later_train_start():
    model = small_model()
    first = torch.optim.SGD([{"params": model[0].parameters(), "name": "encoder"},
                             {"params": model[3].parameters(), "name": "decoder"}], lr=0.1)
    second = torch.optim.SGD([{"params": model[0].parameters(), "name": "backbone"},
                              {"params": model[3].parameters(), "name": "head"}], lr=0.01)
    monitor, sink = monitor_with(LearningRate())
    monitor.train_start(model, first)
    monitor.step_end()
    monitor.train_start(model, second)  # e.g. a second stage, without an epoch_start
    monitor.step_end()
    assert sink.points("learning rate") == {"encoder": [(1, 0.1)], "decoder": [(1, 0.1)],
                                            "backbone": [(2, 0.01)], "head": [(2, 0.01)]}


def test_learning_rate_that_is_not_a_number_is_named_in_the_error():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.param_groups[0]["lr"] = "fast"
    monitor, _ = monitor_with(LearningRate())
    monitor.train_start(model, optimizer)
    with pytest.raises(TypeError, match=r"values\['lr'\] must be a number or a one-element tensor or numpy array, got 'fast'"):
        monitor.step_end()


def test_learning_rate_gives_a_group_added_mid_run_its_own_trace_and_the_first_goes_on():
    model = small_model()
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)
    monitor, sink = monitor_with(LearningRate())
    monitor.train_start(model, optimizer)
    monitor.step_end()
    optimizer.add_param_group({"params": model[3].parameters(), "lr": 0.5, "name": "head"})
    monitor.step_end()
    optimizer.add_param_group({"params": model[1].parameters(), "lr": 0.2})  # no name: numbered
    monitor.epoch_start(1)  # named again at an epoch's start: the same names
    monitor.step_end()
    assert sink.points("learning rate") == {"lr": [(1, 0.1), (2, 0.1), (3, 0.1)], "head": [(2, 0.5), (3, 0.5)],
                                            "group 2": [(3, 0.2)]}


def test_learning_rate_without_an_optimizer_says_where_to_pass_it():
    monitor, _ = monitor_with(LearningRate())
    monitor.train_start(small_model())
    with pytest.raises(ValueError, match=r"pass it to monitor.train_start\(model, optimizer\)"):
        monitor.step_end()


def test_learning_rate_without_an_optimizer_is_reported_once_not_once_a_hook(caplog):
    monitor, _ = monitor_with(LearningRate(), raise_errors=False)
    monitor.train_start(small_model())
    with caplog.at_level(logging.WARNING, logger="monitor"):
        for _ in range(3):
            monitor.after_backward()
            monitor.step_end()
    assert len(caplog.records) == 1 and "LearningRate needs the optimizer" in caplog.text


def test_a_named_group_keeps_its_curve_when_the_backbone_is_unfrozen_into_the_optimizer():
    model = small_model()
    optimizer = torch.optim.AdamW([{"params": model[3].parameters(), "lr": 1e-2, "name": "head"}])
    monitor, sink = monitor_with(LearningRate())
    monitor.train_start(model, optimizer)
    monitor.step_end()
    optimizer.add_param_group({"params": model[0].parameters(), "lr": 1e-3, "name": "backbone"})  # unfreeze
    monitor.step_end()
    assert sink.points("learning rate") == {"head": [(1, 1e-2), (2, 1e-2)], "backbone": [(2, 1e-3)]}


def test_with_several_optimizers_a_group_added_mid_run_leaves_the_optimizer_s_curve_going_on():
    model = small_model()
    generator = torch.optim.SGD(model[0].parameters(), lr=0.1)
    critic = torch.optim.SGD(model[2].parameters(), lr=0.01)
    monitor, sink = monitor_with(LearningRate())
    monitor.train_start(model, {"G": generator, "D": critic})
    monitor.step_end()
    critic.add_param_group({"params": model[3].parameters(), "lr": 0.001})  # D's body unfrozen
    monitor.step_end()
    critic.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.5, "name": "head"})
    monitor.epoch_start(1)  # named again at an epoch's start: the same names
    monitor.step_end()
    assert sink.points("learning rate") == {"G": [(1, 0.1), (2, 0.1), (3, 0.1)], "D": [(1, 0.01), (2, 0.01), (3, 0.01)],
                                            "D/group 1": [(2, 0.001), (3, 0.001)], "D/head": [(3, 0.5)]}


def test_groups_named_alike_keep_their_names_told_apart_by_number():
    model = small_model()
    decay = dict(weight_decay=0.01, name="decay")
    optimizer = torch.optim.AdamW([{"params": [model[0].weight], **decay},
                                   {"params": [model[0].bias, model[3].bias], "name": "no_decay", "lr": 0.5},
                                   {"params": [model[3].weight], **decay}], lr=0.01)
    monitor, sink = monitor_with(LearningRate())
    monitor.train_start(model, optimizer)
    monitor.step_end()
    assert sink.points("learning rate") == {"decay (group 0)": [(1, 0.01)], "no_decay": [(1, 0.5)],
                                            "decay (group 2)": [(1, 0.01)]}
    monitor, sink = monitor_with(LearningRate())
    monitor.train_start(model, {"G": optimizer, "D": torch.optim.SGD(model.parameters(), lr=0.1)})
    monitor.step_end()
    assert set(sink.points("learning rate")) == {"G/decay (group 0)", "G/no_decay", "G/decay (group 2)", "D"}


def test_with_several_optimizers_each_one_s_rate_is_plotted_at_the_steps_it_stepped_with_the_rate_it_used():
    model = small_model()
    generator = torch.optim.Adam(model[0].parameters(), lr=1e-3)
    critic = torch.optim.SGD(model[3].parameters(), lr=0.1)
    decay = torch.optim.lr_scheduler.StepLR(critic, step_size=1, gamma=0.5)
    monitor, sink = monitor_with(LearningRate())
    monitor.train_start(model, {"G": generator, "D": critic})
    for step in range(1, 7):  # a WGAN's critic every step, its generator every third
        model(torch.randn(2, 4)).sum().backward()
        monitor.after_backward()
        critic.step()
        decay.step()
        if step % 3 == 0:
            generator.step()
        monitor.step_end()
    assert sink.points("learning rate") == {"D": [(s, 0.1 * 0.5 ** (s - 1)) for s in range(1, 7)],
                                            "G": [(3, 1e-3), (6, 1e-3)]}


def test_a_group_without_a_learning_rate_is_left_out_said_once_beside_the_others(caplog):
    # Prodigy, D-Adaptation: groups with no 'lr' key, or lr None, and a 'd' they adapt: KeyError: 'lr' at every
    # step, no window; lr=None was told as "values['lr'] must be a number".
    model = torch.nn.Linear(2, 1)
    adaptive = torch.optim.SGD(model.parameters(), lr=0.1)
    del adaptive.param_groups[0]["lr"]
    monitor, sink = monitor_with(LearningRate(), raise_errors=True)
    with caplog.at_level("WARNING", logger="monitor"):
        monitor.train_start(model, adaptive)
        monitor.step_end()
        adaptive.param_groups[0]["lr"] = None
        monitor.step_end()
        adaptive.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.01})
        monitor.step_end()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "LearningRate leaves out 'lr': no learning rate in its group" in said[0], said
    assert sink.points("learning rate") == {"group 1": [(3, 0.01)]}


def test_a_step_the_stop_button_interrupted_and_a_cell_ran_again_has_one_learning_rate_point():
    # The notebook's cell calls train_start again and redoes step 2 from after_backward: lr 2 was there twice.
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(LearningRate())
    monitor.train_start(model, optimizer)
    monitor.after_backward()
    monitor.step_end()
    monitor.after_backward()  # step 2, stopped before its step_end
    monitor.train_start(model, optimizer)  # the cell run again
    monitor.after_backward()
    monitor.step_end()
    assert [x for x, _ in sink.points("learning rate")["lr"]] == [1, 2]
