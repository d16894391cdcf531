"""monitor.norms: each tensor's L2 norm, as torch.linalg.vector_norm takes it, however they are taken."""
from __future__ import annotations

import pytest
import torch

from monitor.norms import STACKED_UP_TO, each_norm, foreach_norm, read, stacks_of


def _expected(tensors):
    return [torch.linalg.vector_norm(t.to_dense().float()).item() for t in tensors]


def _mixed():
    torch.manual_seed(0)
    return ([torch.randn(8, 8) for _ in range(5)] + [torch.randn(8) for _ in range(4)]
            + [torch.randn(8, 8, dtype=torch.float64) for _ in range(2)] + [torch.randn(8, 8).half() for _ in range(2)]
            + [torch.randn(()) for _ in range(3)] + [torch.randn(STACKED_UP_TO + 1) for _ in range(2)]
            + [torch.randn(3, 5)])


def test_small_cpu_tensors_alike_in_shape_and_dtype_are_stacked_the_others_taken_one_by_one():
    tensors = _mixed()
    singles, stacks = stacks_of(tensors)
    assert [len(stack) for stack in stacks] == [5, 4, 2, 2, 3]  # float64 and float16 apart from float32
    assert singles == (len(tensors) - 3, len(tensors) - 2, len(tensors) - 1)  # too big to copy; alone
    assert stacks_of([torch.randn(4, 4), torch.randn(4)]) is None  # nothing alike: one foreach pass


def test_each_norm_equals_vector_norm_with_or_without_stacks():
    tensors = _mixed()
    expected = _expected(tensors)
    for stacks in (None, stacks_of(tensors)):
        norms = each_norm(tensors, stacks)
        assert all(isinstance(n, float) for n in norms)
        assert norms == pytest.approx(expected, rel=1e-3)  # float16 stored values, float32 sums


def test_tensors_that_no_longer_match_their_stacks_are_taken_one_by_one():
    params = [torch.randn(4, 4) for _ in range(3)]
    stacks = stacks_of(params)
    other_shapes = [torch.randn(4, 4), torch.randn(2, 8), torch.randn(4, 4)]
    assert each_norm(other_shapes, stacks) == pytest.approx(_expected(other_shapes))


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_tensors_count_each_stored_value_once():
    # an uncoalesced COO tensor: index 1 twice, so its value there is 1 + 2 = 3
    coo = torch.sparse_coo_tensor(torch.tensor([[1, 1, 4]]), torch.tensor([1.0, 2.0, 4.0]), (6,),
                                  check_invariants=True)
    csr = torch.randn(4, 4).relu().to_sparse_csr()
    dense = torch.randn(6)
    assert each_norm([coo, csr, dense]) == pytest.approx([5.0, *_expected([csr, dense])])
    assert each_norm([coo, coo], stacks_of([torch.zeros(6), torch.zeros(6)])) == pytest.approx([5.0, 5.0])
    assert read(foreach_norm([coo])) == pytest.approx([5.0])


def test_channels_last_tensors_are_stacked_too():
    tensors = [torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last) for _ in range(3)]
    stacks = stacks_of(tensors)
    assert stacks is not None and each_norm(tensors, stacks) == pytest.approx(_expected(tensors))
