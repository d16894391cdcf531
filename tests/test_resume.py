"""resume(): what it could not restore, and a monitor of another env, said plainly."""
from __future__ import annotations

import signal

import pytest
import torch

from helpers.checkpoint_loop import build, trained_folder
from helpers.monitors import says
from monitor import Monitor, resume
from monitor.log import NullSink


def test_resume_says_which_parts_it_could_not_restore(tmp_path, caplog):
    folder = trained_folder(tmp_path, epochs=1)
    parts = build()
    with says(caplog, r"holds the scheduler's state \(ExponentialLR\), which is not restored"):
        resume(folder, parts.model, parts.optimizer)
    with pytest.raises(ValueError, match="scaler must be None for .* which holds no scaler state, got a GradScaler"):
        resume(folder, parts.model, parts.optimizer, parts.scheduler, torch.amp.GradScaler("cpu"))


def test_restoring_a_monitor_with_another_env_warns_that_curves_start_over(tmp_path, caplog):
    folder = trained_folder(tmp_path, epochs=1)
    parts = build()
    start = resume(folder, parts.model, parts.optimizer, parts.scheduler)
    start = type(start)(**{**start.__dict__, "env": "elsewhere"})

    class Sink(NullSink):
        env = "mnist"

    monitor = Monitor([], sink=Sink())
    with says(caplog, "writes to env 'mnist', the checkpoint's run to 'elsewhere'"):
        start.restore(monitor)
    assert monitor.state.step == start.step == 5


class _Killed(Exception):
    pass


def _resumable_loop(folder, samples: int):
    """A shuffled loader of ``samples`` numbers in batches of 2, a validation loader, a model, its
    optimizer and a started Monitor checkpointing every step with resume=True."""
    from torch.utils.data import DataLoader, TensorDataset
    from monitor import Checkpoint

    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.arange(float(samples)).unsqueeze(1)), batch_size=2, shuffle=True)
    validation = DataLoader(TensorDataset(torch.zeros(6, 1)), batch_size=2)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = Monitor([Checkpoint(folder, every_steps=1, resume=True)], sink=NullSink(), raise_errors=True)
    monitor.train_start(model, optimizer)
    return loader, validation, model, optimizer, monitor


def _accumulating_run(folder, seen, kill_at_step=None):
    """Two loader batches a step (gradient accumulation), validation every second step, a checkpoint
    every step, resumed by the same command; killed as the step after ``kill_at_step`` began."""
    loader, validation, model, optimizer, monitor = _resumable_loop(folder, samples=32)
    for epoch in monitor.epochs(2):
        for i, (x,) in enumerate(monitor.batches(loader)):
            seen.append(x.flatten().tolist())
            model(x).sum().backward()
            if i % 2 == 1:
                monitor.after_backward()
                if kill_at_step is not None and monitor.state.step == kill_at_step + 1:
                    raise _Killed
                optimizer.step()
                optimizer.zero_grad()
                monitor.step_end(loss=1.0)
                if monitor.state.step % 2 == 0:  # validation mid-epoch, through monitor.batches too
                    with torch.no_grad():
                        losses = [model(v).sum().item() for (v,) in monitor.batches(validation)]
                    monitor.validation_end({"loss": sum(losses)})
    monitor.train_end()


def test_a_loop_accumulating_over_loader_batches_resumes_with_the_batch_after_the_checkpoint(tmp_path):
    whole, seen = [], []
    _accumulating_run(tmp_path / "whole", whole)
    with pytest.raises(_Killed):
        _accumulating_run(tmp_path / "killed", seen, kill_at_step=3)
    assert len(seen) == 8  # three steps of two batches, and the batches of the step it died in
    again = []
    _accumulating_run(tmp_path / "killed", again)
    # Step 3's checkpoint was to become the latest at step 4's end (the loop validates after its
    # steps): it goes on after step 2's, validated.
    assert seen[:4] + again == whole


def _odd_epoch_run(folder, seen, kill_at_step=None, validate_inside=False):
    """Seven batches an epoch, a step every two and one for the last batch alone, tested on
    monitor.state.batch_index; killed mid-epoch, then the same command again. With
    ``validate_inside``, each step validates through monitor.batches before its step_end."""
    loader, validation, model, optimizer, monitor = _resumable_loop(folder, samples=14)
    for epoch in monitor.epochs(2):
        for (x,) in monitor.batches(loader):
            index = monitor.state.batch_index
            seen.append((epoch, index, x.flatten().tolist()))
            model(x).sum().backward()
            if validate_inside:
                with torch.no_grad():
                    [model(v) for (v,) in monitor.batches(validation)]
            if (monitor.state.batch_index + 1) % 2 == 0 or monitor.state.batch_index + 1 == len(loader):
                monitor.after_backward()
                optimizer.step()
                optimizer.zero_grad()
                monitor.step_end(loss=1.0)
                if monitor.state.step == kill_at_step:
                    raise _Killed
    monitor.train_end()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("validate_inside", [False, True], ids=["plain", "validation-inside-the-step"])
def test_batch_index_goes_on_after_a_resume_where_enumerate_starts_again(tmp_path, validate_inside):
    whole = []
    expected = _odd_epoch_run(tmp_path / "whole", whole, validate_inside=validate_inside)
    assert [index for _, index, _ in whole] == list(range(7)) * 2
    seen = []
    with pytest.raises(_Killed):  # epoch 1, after its batch 3
        _odd_epoch_run(tmp_path / "killed", seen, kill_at_step=6, validate_inside=validate_inside)
    again = []
    weights = _odd_epoch_run(tmp_path / "killed", again, validate_inside=validate_inside)
    assert again == whole[11:]  # batch 4 of epoch 1 on, numbered as in the straight run
    assert all(torch.equal(a, b) for a, b in zip(weights, expected))


def _validating_run(folder, validated, kill=None):
    """Validation after every second step's step_end, on a fresh shuffled loader (which draws from
    torch's generator), training on noisy inputs, a checkpoint every step; killed where ``kill``
    says: ("validation", step) during that step's validation, ("next step", step) in that step."""
    from torch.utils.data import DataLoader, TensorDataset

    loader, _, model, optimizer, monitor = _resumable_loop(folder, samples=16)
    validation = DataLoader(TensorDataset(torch.linspace(0, 1, 6).unsqueeze(1)), batch_size=2, shuffle=True)
    for epoch in monitor.epochs(2):
        for (x,) in monitor.batches(loader):
            model(x + torch.rand_like(x)).sum().backward()
            monitor.after_backward()
            if kill == ("next step", monitor.state.step):
                raise _Killed
            if kill == ("SIGTERM", monitor.state.step):  # a scheduler's pre-emption, mid-step
                signal.raise_signal(signal.SIGTERM)
            optimizer.step()
            optimizer.zero_grad()
            monitor.step_end(loss=1.0)
            if monitor.state.step % 2 == 0:
                with torch.no_grad():
                    loss = sum(model(v).sum().item() * (i + 1) for i, (v,) in enumerate(validation))
                if kill == ("validation", monitor.state.step):
                    raise _Killed
                validated.append((monitor.state.step, loss))
                monitor.validation_end({"loss": loss})
    monitor.train_end()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kill", [("validation", 4), ("next step", 6), ("validation", 10), ("SIGTERM", 4)],
                         ids=["during-a-validation", "after-it", "during-one-in-the-next-epoch",
                              "sigterm-in-a-validating-step"])
def test_a_run_killed_during_or_after_a_validation_that_follows_a_step_s_checkpoint_resumes_exactly(tmp_path,
                                                                                                    kill):
    straight: list = []
    expected = _validating_run(tmp_path / "straight", straight)
    validated: list = []
    # A run "killed" here keeps its handlers: the signals as a fresh process has them.
    previous = {number: signal.signal(number, signal.SIG_DFL) for number in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        with pytest.raises(SystemExit if kill[0] == "SIGTERM" else _Killed):
            _validating_run(tmp_path / "killed", validated, kill)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if kill[0] == "SIGTERM":  # it stopped once the step's validation was done
        assert validated[-1][0] == 4
    weights = _validating_run(tmp_path / "killed", validated)
    assert validated == straight  # each validation once, with the same loss: the same numbers drawn
    assert all(torch.equal(a, b) for a, b in zip(weights, expected))


def test_two_loaders_through_monitor_batches_at_once_are_said_once_and_one_zip_of_them_is_not(caplog):
    # A multi-task loop's zip(monitor.batches(a), cycle(monitor.batches(b))): its checkpoints kept
    # b's position, and a resumed run trained 20 steps more than one never killed, saying nothing.
    import itertools

    from torch.utils.data import DataLoader

    a, b = DataLoader(torch.arange(20.0), batch_size=4), DataLoader(torch.arange(8.0), batch_size=4)
    for interleaved in (True, False):
        monitor = Monitor([], sink=NullSink())
        monitor.train_start(torch.nn.Linear(1, 1))
        caplog.clear()
        with caplog.at_level("WARNING", logger="monitor"):
            for _ in monitor.epochs(2):
                batches = zip(monitor.batches(a), itertools.cycle(monitor.batches(b))) if interleaved else \
                    monitor.batches(zip(a, itertools.cycle(b)))  # one position: resumed exactly
                for _ in batches:
                    for _ in monitor.batches(b):  # a loader inside the step's code, as a validation's
                        pass
                    monitor.step_end(loss=1.0)
        said = [r.getMessage() for r in caplog.records if "at once" in r.getMessage()]
        assert said == (["monitor: two loaders are iterated through monitor.batches at once (a zip of them?): a "
                         "checkpoint keeps the position of one, so a resume repeats or skips batches; iterate them "
                         "as one, monitor.batches(zip(loader_a, itertools.cycle(loader_b)))"] if interleaved else [])
        assert monitor.state.step == 10


def _evaluating_first_run(server, folder, validated, kill=None):
    """nanoGPT's shape: each iteration of ``monitor.steps`` evaluates the weights of the steps done
    at its top, before its step (random batches, no loader); a checkpoint every second step."""
    from helpers.monitors import live_monitor
    from monitor import Checkpoint, Scalars

    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = live_monitor(server, f"eval-first-{folder.name}", folder, Scalars(),
                           Checkpoint(folder / "ckpt", every_steps=2, resume=True))
    monitor.train_start(model, optimizer)
    try:
        for it in monitor.steps(8):
            if it % 2 == 0:
                with torch.no_grad():
                    loss = model(torch.rand(4, 1)).pow(2).mean().item()
                if kill == ("validation", it):
                    raise _Killed
                validated.append((it, loss))
                monitor.validation_end({"loss": loss})
            model(torch.rand(2, 1)).pow(2).mean().backward()
            monitor.after_backward()
            if kill == ("step", monitor.state.step):
                raise _Killed
            optimizer.step()
            optimizer.zero_grad()
            monitor.step_end(loss=1.0)
        monitor.train_end()
    finally:
        monitor.close()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kill", [("step", 5), ("validation", 4)], ids=["after-the-evaluation", "during-it"])
def test_a_loop_evaluating_at_the_top_of_its_iteration_resumes_exactly_with_each_evaluation_once(
        visdom_server, read_window, tmp_path, kill):
    """The evaluation after step 4's checkpoint was saved into it again, random numbers and
    all, as one that ends step 4's code is: the resumed run, which runs that iteration again,
    evaluated from other random numbers and drew other batches, and the point was there twice."""
    straight: list = []
    expected = _evaluating_first_run(visdom_server, tmp_path / "straight", straight)
    validated: list = []
    with pytest.raises(_Killed):
        _evaluating_first_run(visdom_server, tmp_path / "killed", validated, kill)
    again: list = []
    weights = _evaluating_first_run(visdom_server, tmp_path / "killed", again)
    assert again == straight[2:]  # from the iteration of step 4's checkpoint on, the same numbers
    assert all(torch.equal(a, b) for a, b in zip(weights, expected))
    xs, ys = read_window(visdom_server, "eval-first-killed", "loss")["validation"]
    assert xs == [0, 2, 4, 6] and ys == pytest.approx([loss for _, loss in straight])


def test_a_loop_taking_several_steps_from_one_batch_is_told_a_resume_cannot_go_back_into_it(tmp_path, caplog):
    """Truncated BPTT: four steps a batch of series; a resume from the checkpoint of the batch's
    first step dropped the batch whole, its other chunks untrained, without a word."""
    loader, _, model, optimizer, monitor = _resumable_loop(tmp_path, samples=8)
    with caplog.at_level("WARNING", logger="monitor"):
        for epoch in monitor.epochs(1):
            for (x,) in monitor.batches(loader):
                for chunk in range(2):
                    model(x).sum().backward()
                    monitor.after_backward()
                    optimizer.step()
                    optimizer.zero_grad()
                    monitor.step_end(loss=1.0)
    said = [r.getMessage() for r in caplog.records if "several steps from one batch" in r.getMessage()]
    assert len(said) == 1 and "draw each chunk through monitor.batches" in said[0]


def test_monitor_batches_has_the_length_of_the_batches_it_gives_for_a_progress_bar(tmp_path):
    # tqdm(monitor.batches(loader)) showed no total: a generator has no len()
    def run(kill_at_step=None):
        loader, validation, model, optimizer, monitor = _resumable_loop(tmp_path / "run", samples=14)
        counted = []
        for epoch in monitor.epochs(2):
            batches = monitor.batches(loader)
            told, given = len(batches), 0
            for (x,) in batches:
                given += 1
                assert len(batches) == told  # asked again, mid-epoch: the same total
                with torch.no_grad():
                    validated = monitor.batches(validation)
                    assert len(validated) == 3 and len(list(validated)) == 3
                model(x).sum().backward()
                monitor.after_backward()
                optimizer.step()
                optimizer.zero_grad()
                monitor.step_end(loss=1.0)
                if monitor.state.step == kill_at_step:
                    raise _Killed
            counted.append((told, given))
        monitor.train_end()
        return counted

    with pytest.raises(_Killed):
        run(kill_at_step=3)
    assert run() == [(4, 4), (7, 7)]  # the resumed epoch's 4 batches left of 7, then a whole one
    monitor = Monitor([], sink=NullSink())
    stream = monitor.batches(iter(range(3)))
    with pytest.raises(TypeError):
        len(stream)
    assert list(stream) == [0, 1, 2]

    class Shards(torch.utils.data.IterableDataset):  # a stream whose length is a guess (a DDP shard's)
        def __iter__(self):
            return iter(range(3))

        def __len__(self):
            return 2

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked its length unbidden, the DataLoader warns when more comes
        assert [x for x in monitor.batches(torch.utils.data.DataLoader(Shards(), batch_size=None))] == [0, 1, 2]
