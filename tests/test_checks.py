"""One vocabulary at the door: a wrong type is a TypeError, a wrong value a ValueError, everywhere."""
from __future__ import annotations

import pytest
import torch

from monitor import Checkpoint, EpochBatchSampler, GradNorms, Images, Monitor, Scalars
from monitor.checks import integer, is_scalar, scalar, seconds, text
from monitor.connection import Connection
from monitor.log import NullSink
from monitor.windows import Windows


@pytest.mark.parametrize("make", [
    lambda tmp: Checkpoint(tmp, keep_last="2"),
    lambda tmp: Checkpoint(tmp, keep_best="2", metric="loss"),
    lambda tmp: Checkpoint(tmp, every_steps=1.5),
    lambda tmp: Checkpoint(tmp, metric=3),
    lambda tmp: Scalars(every="2"),
    lambda tmp: GradNorms(weights=1),
    lambda tmp: Images(count=2.0),
    lambda tmp: EpochBatchSampler(10, batch_size="4"),
    lambda tmp: Windows(points_per_trace=100.0),
    lambda tmp: Connection(timeout="5"),
    lambda tmp: Monitor([], sink=NullSink()).epoch_start("1"),
])
def test_a_wrong_type_is_a_type_error_naming_the_argument(tmp_path, make):
    with pytest.raises(TypeError, match=r"must be .*, got"):
        make(tmp_path)


@pytest.mark.parametrize("make", [
    lambda tmp: Checkpoint(tmp, keep_last=0),
    lambda tmp: Checkpoint(tmp, keep_best=-1, metric="loss"),
    lambda tmp: Checkpoint(tmp, metric=" "),
    lambda tmp: Scalars(every=0),
    lambda tmp: EpochBatchSampler(10, batch_size=0),
    lambda tmp: EpochBatchSampler(10, batch_size=2, rank=3, world_size=2),
    lambda tmp: Windows(points_per_trace=9),
    lambda tmp: Connection(timeout=0),
    lambda tmp: Monitor([], sink=NullSink()).epoch_start(-1),
])
def test_a_wrong_value_is_a_value_error_naming_the_argument(tmp_path, make):
    with pytest.raises(ValueError, match=r"must be .*, got"):
        make(tmp_path)


def test_the_checks_say_what_was_expected_and_what_came():
    with pytest.raises(TypeError, match=r"^every must be an int >= 1, got '2'$"):
        integer("every", "2", minimum=1)
    with pytest.raises(ValueError, match=r"^skip must be an int between 0 and 4, got 5$"):
        integer("skip", 5, 0, 4)
    with pytest.raises(ValueError, match=r"^timeout must be a number of seconds > 0, got -1$"):
        seconds("timeout", -1)
    with pytest.raises(ValueError, match=r"^env must be a non-empty str, got ''$"):
        text("env", "")
    with pytest.raises(ValueError, match=r"value must be a number or a one-element tensor or numpy array, got a tensor of shape \(2,\)"):
        scalar("value", torch.zeros(2))
    with pytest.raises(TypeError, match=r"value must be a real number, got a tensor of dtype torch.complex64"):
        scalar("value", torch.tensor(1j))
    assert is_scalar(torch.tensor([0.5])) and is_scalar(3) and not is_scalar("1")
    # A bool is 0 or 1, as TensorBoard takes it: an episode's success, whatever holds it
    import numpy as np
    assert [float(scalar("value", v)) for v in (True, np.bool_(False), np.array([True]))] == [1.0, 0.0, 1.0]
    assert all(map(is_scalar, (True, np.bool_(True), torch.tensor(True))))
    from decimal import Decimal
    from fractions import Fraction
    assert scalar("value", Decimal("0.1")) == 0.1 and is_scalar(Decimal("0.1"))
    assert scalar("value", Fraction(1, 4)) == 0.25


def test_several_models_given_as_the_model_are_told_how_to_go_in_as_one():
    actor, critic = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got list: several models go in as one, "
                                        r"nn.ModuleDict\(\{'actor': actor, 'critic': critic\}\)"):
        Monitor([], sink=NullSink()).train_start([actor, critic])


def test_a_sink_that_cannot_say_where_its_run_log_ends_is_refused():
    class PrintingSink:  # put, flush and close, but no sync/env/position: checkpoints could not rewind it
        def put(self, record):
            print(record)

        def flush(self, timeout=None):
            return True

        def close(self, timeout=None):
            return True

    with pytest.raises(TypeError, match=r"sink must provide .* without \['sync', 'env', 'run_id', 'position'\]"):
        Monitor([], sink=PrintingSink())
    Monitor([], sink=NullSink())  # what a sink without a run log says: None for all three


def test_stateless_callbacks_of_one_class_may_repeat_but_stateful_ones_need_their_own_key():
    Monitor([Images(), Images(source="outputs", every=10)], sink=NullSink())
    with pytest.raises(ValueError, match=r"distinct state_key values, got \['Scalars'\] more than once"):
        Monitor([Scalars(), Scalars(x="epoch")], sink=NullSink())
    epochs = Scalars(x="epoch")
    epochs.state_key = "epochs"
    assert set(Monitor([Scalars(), epochs], sink=NullSink()).state_dict()["callbacks"]) == {"Scalars", "epochs"}
