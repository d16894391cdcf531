"""Every callback checks its arguments at the door."""
from __future__ import annotations


import pytest

from monitor import GradNorms, Images, LearningRate, Scalars, Summary


@pytest.mark.parametrize("make, error, match", [
    (lambda: Scalars(every=0), ValueError, "every must be an int >= 1, got 0"),
    (lambda: Scalars(every=2.5), TypeError, "every must be an int >= 1, got 2.5"),
    (lambda: Scalars(x="batch"), ValueError, "x must be 'step' or 'epoch', got 'batch'"),
    (lambda: LearningRate(every=0), ValueError, "every must be an int >= 1, got 0"),
    (lambda: GradNorms(every=-1), ValueError, "every must be an int >= 1, got -1"),
    (lambda: GradNorms(weights="yes"), TypeError, "weights must be True or False, got 'yes'"),
    (lambda: GradNorms(update_ratio=1), TypeError, "update_ratio must be True or False, got 1"),
    (lambda: Images(every=0), ValueError, "every must be an int >= 1, got 0"),
    (lambda: Images(count=0), ValueError, "count must be an int >= 1, got 0"),
    (lambda: Images(source="labels"), ValueError, "source must be 'inputs' or 'outputs' or 'targets', got 'labels'"),
    (lambda: Images(captions="labels"), ValueError, "captions must be 'targets' or .* got 'labels'"),
    (lambda: Images(class_names="cat dog"), TypeError, "class_names must be a sequence or a mapping"),
    (lambda: Summary(hparams=[("lr", 0.1)]), TypeError, r"hparams must be a mapping of name to value \(or an argparse.Namespace, a dataclass\), got list"),
])
def test_callbacks_check_their_arguments_at_the_door(make, error, match):
    with pytest.raises(error, match=match):
        make()
