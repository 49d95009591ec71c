"""RowSparseAdam gives torch.optim.SparseAdam's results bit for bit (uncoalesced gradients
with duplicate rows, rows never touched, a table without a gradient in some steps,
``maximize``) and shares its state_dict format both ways."""

from __future__ import annotations

import copy

import pytest
import torch

from feedrank.training.sparse_adam import RowSparseAdam


def _tables() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(40, 8, generator=g)), torch.nn.Parameter(torch.randn(25, 8, generator=g))]


def _grads(step: int) -> list[torch.Tensor | None]:
    g = torch.Generator().manual_seed(1000 + step)
    out: list[torch.Tensor | None] = []
    for rows, n in ((40, 30), (25, 12)):
        idx = torch.randint(0, rows // 2 + step, (n,), generator=g).clamp_(max=rows - 1)  # duplicates; rows grow
        idx[0] = idx[-1]  # at least one duplicate row
        out.append(torch.sparse_coo_tensor(idx[None, :], torch.randn(n, 8, generator=g), (rows, 8),
                                           check_invariants=True))
    if step % 3 == 2:
        out[1] = None  # a table with no gradient this step
    return out


def _run(opt_cls, params: list[torch.nn.Parameter], steps: range, **kw) -> torch.optim.Optimizer:
    opt = opt_cls(params, lr=0.01, **kw)
    for s in steps:
        for p, gr in zip(params, _grads(s)):
            p.grad = gr
        opt.step()
    return opt


@pytest.mark.parametrize("maximize", [False, True])
def test_same_bits_as_torch_sparse_adam(maximize):
    ref, mine = _tables(), _tables()
    o_ref = _run(torch.optim.SparseAdam, ref, range(7), maximize=maximize)
    o_mine = _run(RowSparseAdam, mine, range(7), maximize=maximize)
    for a, b in zip(ref, mine):
        assert torch.equal(a, b)
    moved = torch.any(ref[0] != _tables()[0], dim=1)
    assert 0 < int(moved.sum()) < 40  # some rows were updated, some never touched
    for pa, pb in zip(ref, mine):
        sa, sb = o_ref.state[pa], o_mine.state[pb]
        assert sa["step"] == sb["step"]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_state_dict_moves_between_the_two():
    ref, mine = _tables(), _tables()
    o_ref = _run(torch.optim.SparseAdam, ref, range(3))
    with torch.no_grad():
        for a, b in zip(ref, mine):
            b.copy_(a)
    o_mine = RowSparseAdam(mine, lr=0.01)
    o_mine.load_state_dict(copy.deepcopy(o_ref.state_dict()))  # resume a SparseAdam checkpoint with RowSparseAdam
    for s in range(3, 6):
        for p, q, gr in zip(ref, mine, _grads(s)):
            p.grad, q.grad = gr, gr
        o_ref.step()
        o_mine.step()
    for a, b in zip(ref, mine):
        assert torch.equal(a, b)
    back = torch.optim.SparseAdam(_tables(), lr=0.01)
    back.load_state_dict(copy.deepcopy(o_mine.state_dict()))
    assert [back.state[p]["step"] for p in back.param_groups[0]["params"]] == [6, 4]  # table 1 skips steps 2, 5


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        RowSparseAdam([torch.nn.Parameter(torch.zeros(4))])
    p = torch.nn.Parameter(torch.zeros(4, 2))
    p.grad = torch.ones(4, 2)
    with pytest.raises(RuntimeError, match="dense gradients"):
        RowSparseAdam([p]).step()
    p.grad = torch.ones(4, 2).to_sparse()  # both dims sparse: not row-sparse
    with pytest.raises(ValueError, match="sparse_dim 2"):
        RowSparseAdam([p]).step()
