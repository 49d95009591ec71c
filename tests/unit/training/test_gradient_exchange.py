"""The gradient exchange of data-parallel training: two gloo processes, each with half of a
batch, end up with the gradient one process computes on the whole batch (dense and
sparse, per-example loss), the same bits on both ranks; through shared memory and through
gloo alone (where the first step's buffer overflows the capacity into a second gather)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from feedrank.training import distributed as dist
from feedrank.training.sparse_adam import RowSparseAdam

N = 8  # global batch; rank r takes rows r*4 .. r*4+3
MODES = ("shared-memory", "gloo")


class Tiny(torch.nn.Module):
    """Two sparse tables and a sparse bag (shared D=4), dense layers, a parameter only
    rows with flag=1 use (all on rank 0) and one nobody uses."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.a = torch.nn.Embedding(50, 4, sparse=True)
        self.b = torch.nn.Embedding(20, 4, sparse=True)
        self.bag = torch.nn.EmbeddingBag(30, 4, mode="mean", sparse=True)
        self.lin = torch.nn.Linear(12, 1)
        self.only_flagged = torch.nn.Parameter(torch.tensor([0.5]))
        self.unused = torch.nn.Parameter(torch.zeros(3))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def sparse_parameters(self) -> list[torch.nn.Parameter]:
        return [self.a.weight, self.b.weight, self.bag.weight]

    def dense_parameters(self) -> list[torch.nn.Parameter]:
        return [self.lin.weight, self.lin.bias, self.only_flagged, self.unused]

    def loss(self, rows: range, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(100 + step)
        ia = torch.randint(0, 50, (N,), generator=g)
        ia[1] = ia[6]  # a row both ranks touch
        ib = torch.randint(0, 20, (N,), generator=g)
        tokens = torch.randint(0, 30, (3 * N,), generator=g)
        y = torch.randn(N, generator=g)
        flag = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
        sel = torch.tensor(list(rows))
        x = torch.cat([self.a(ia[sel]), self.b(ib[sel]),
                       self.bag(tokens.view(N, 3)[sel].reshape(-1), torch.arange(0, 3 * len(sel), 3))], dim=1)
        pred = self.lin(x).squeeze(-1)
        if bool(flag[sel].any()):
            pred = pred + self.only_flagged * flag[sel].float()
        return ((pred - y[sel]) ** 2).mean()


def _grads(model: Tiny) -> dict[str, torch.Tensor | None]:
    out: dict[str, torch.Tensor | None] = {}
    for name, p in model.named_parameters():
        out[name] = None if p.grad is None else (p.grad.to_dense() if p.grad.is_sparse else p.grad.clone())
    return out


def _train(loss_of, sparse_opt, distributed: bool) -> dict[str, torch.Tensor]:
    """Three optimizer steps (Adam + ``sparse_opt``, gradients averaged over ranks when
    ``distributed``) from Tiny's initial weights; the weights after them."""
    model = Tiny()
    opts = [torch.optim.Adam(model.dense_parameters(), lr=0.05), sparse_opt(model.sparse_parameters(), lr=0.05)]
    for step in range(3):
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss_of(model, step).backward()
        if distributed:
            dist.average_gradients(model.dense_parameters(), model.sparse_parameters())
        for o in opts:
            o.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    for mode in MODES:  # one process pair for both transports (start-up dominates this test)
        os.environ["FEEDRANK_SHM_GATHER"] = "1" if mode == "shared-memory" else "0"
        tdist.init_process_group("gloo", init_method=f"file://{store}-{mode}", rank=rank, world_size=2)
        try:
            model = Tiny()
            timer = dist.CommTimer()
            results = []
            for step in range(3):
                model.zero_grad(set_to_none=True)
                loss = model.loss(range(4 * rank, 4 * rank + 4), step)
                loss.backward()
                extras = dist.average_gradients(model.dense_parameters(), model.sparse_parameters(),
                                                torch.tensor([loss.item(), float(rank)]), timer)
                sparse_ok = all(p.grad is None or p.grad.is_sparse for p in model.sparse_parameters())
                results.append({"grads": _grads(model), "extras": extras.clone(), "sparse_ok": sparse_ok})
            trained = _train(lambda m, step: m.loss(range(4 * rank, 4 * rank + 4), step), RowSparseAdam, distributed=True)
            torch.save({"results": results, "trained": trained, "steps": timer.steps, "collectives": timer.collectives,
                        "overflow": timer.overflow_steps, "capacity": timer.capacity,
                        "comm_s": timer.comm_s, "wait_s": timer.wait_s}, Path(out_dir) / f"{mode}-rank{rank}.pt")
        finally:
            dist.shutdown()  # closes the shared-memory files, ends the group


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Runs this file as a script twice (ranks 0 and 1, file store); each writes what it got."""
    tmp = tmp_path_factory.mktemp("exchange")
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(tmp / "store"), str(tmp)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), outs
    return tmp


@pytest.fixture(params=MODES)
def two_ranks(runs: Path, request) -> list[dict]:
    """What ranks 0 and 1 got, gathering through shared memory or through gloo alone."""
    return [torch.load(runs / f"{request.param}-rank{r}.pt", weights_only=False) for r in range(2)]


def test_two_ranks_average_to_the_whole_batch_gradient(two_ranks):
    for step in range(3):
        ref = Tiny()
        ref.loss(range(N), step).backward()
        want = _grads(ref)
        got = two_ranks[0]["results"][step]["grads"]
        assert want.keys() == got.keys()
        for name, w in want.items():
            if w is None:  # nobody used it: no gradient on any rank either
                assert got[name] is None, name
                continue
            assert got[name] is not None, name
            torch.testing.assert_close(got[name], w, rtol=1e-5, atol=1e-6, msg=f"{name} at step {step}")
        assert two_ranks[0]["results"][step]["sparse_ok"]
        assert got["unused"] is None and got["only_flagged"] is not None


def test_both_ranks_hold_the_same_bits_and_the_same_metrics(two_ranks):
    for step in range(3):
        g0, g1 = (two_ranks[r]["results"][step]["grads"] for r in range(2))
        for name in g0:
            assert (g0[name] is None) == (g1[name] is None), name
            assert g0[name] is None or torch.equal(g0[name], g1[name]), name
        e0, e1 = (two_ranks[r]["results"][step]["extras"] for r in range(2))
        assert torch.equal(e0, e1) and float(e0[1]) == 0.5  # extras are averaged: (0 + 1) / 2


def test_training_steps_with_row_sparse_adam_keep_ranks_identical(two_ranks):
    """Adam + RowSparseAdam after the exchange: both ranks hold the same weights, bit for bit,
    and the weights one process gets from the whole batch with torch's SparseAdam."""
    w0, w1 = two_ranks[0]["trained"], two_ranks[1]["trained"]
    want = _train(lambda m, step: m.loss(range(N), step), torch.optim.SparseAdam, distributed=False)
    start = Tiny().state_dict()
    for name, w in want.items():
        assert torch.equal(w0[name], w1[name]), name
        torch.testing.assert_close(w0[name], w, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(w0["a.weight"], start["a.weight"]) and torch.equal(w0["unused"], start["unused"])


def test_one_gather_per_step_and_gloo_capacity_overflows_once(two_ranks, request):
    shared = request.node.callspec.params["two_ranks"] == "shared-memory"
    for r in range(2):
        s = two_ranks[r]
        assert s["steps"] == 3 and s["comm_s"] > 0 and s["wait_s"] >= 0
        if shared:  # buffers of any length, no padding
            assert s["collectives"] == 3 and s["overflow"] == 0 and s["capacity"] == 0
        else:  # step 0 has capacity 0: everything goes in the second gather; then it fits
            assert s["collectives"] == 4 and s["overflow"] == 1 and s["capacity"] > 0


def test_one_process_is_a_no_op_and_bad_parameters_are_named():
    extras = torch.tensor([2.5])
    assert dist.average_gradients([], [], extras) is extras
    with pytest.raises(ValueError, match="sparse parameters must be"):
        dist._local_rows([torch.nn.Parameter(torch.zeros(3, 5))], 4)
    dense_grad = torch.nn.Parameter(torch.zeros(3, 4))
    dense_grad.grad = torch.ones(3, 4)
    with pytest.raises(ValueError, match="has a dense gradient"):
        dist._local_rows([dense_grad], 4)


if __name__ == "__main__":  # one rank of the two_ranks fixture
    _worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
