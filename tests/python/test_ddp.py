"""DistributedDataParallel on CPU over the backend under test.

Each rank trains the same small MLP (same seed) for a few steps on its shard
of a global batch.  Afterwards the parameters must be bitwise identical on
all ranks (compared through the harness' store, not through the backend) and
equal, within float tolerance, to a single-process model trained with the
same optimizer on the concatenated batch: with equal shard sizes the average
of the per-shard mean-loss gradients is the gradient of the global mean loss.
"""

import hashlib
from datetime import timedelta

import pytest
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mp_harness import case, params

STEPS = 5
SHARD = 6  # samples per rank and step


def _model():
    torch.manual_seed(1234)
    return nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 16),
                         nn.ReLU(), nn.Linear(16, 3))


def _batch(step, ws):
    g = torch.Generator().manual_seed(777 + step)
    x = torch.randn(ws * SHARD, 10, generator=g)
    y = torch.randn(ws * SHARD, 3, generator=g)
    return x, y


def _reference(ws, steps, opt_cls, **opt_kw):
    model = _model()
    opt = opt_cls(model.parameters(), **opt_kw)
    for s in range(steps):
        x, y = _batch(s, ws)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return model


def _check_against(ctx, ddp_model, ref_model, what):
    ps = [p.detach() for p in ddp_model.module.parameters()]
    rs = [p.detach() for p in ref_model.parameters()]
    for i, (p, r) in enumerate(zip(ps, rs)):
        torch.testing.assert_close(
            p, r, rtol=1e-5, atol=1e-6,
            msg=lambda m, i=i: f"{what}: parameter {i} differs from the "
                               f"single-process reference: {m}")
    # bitwise identical on every rank
    h = hashlib.sha256(b"".join(p.contiguous().numpy().tobytes()
                                for p in ps)).hexdigest()
    ctx.store.set(f"hash/{what}/{ctx.rank}", h)
    keys = [f"hash/{what}/{r}" for r in range(ctx.world_size)]
    ctx.store.wait(keys, timedelta(seconds=ctx.op_timeout))
    hashes = [ctx.store.get(k).decode() for k in keys]
    assert len(set(hashes)) == 1, \
        f"{what}: parameters differ across ranks (hashes {hashes})"


def _train(ctx, ddp_kw, opt_cls, what, **opt_kw):
    ws, me = ctx.world_size, ctx.rank
    model = _model()
    if me != 0:
        # DDP must broadcast rank 0's initial parameters
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5 * (me + 1))
    ddp = DDP(model, **ddp_kw)
    opt = opt_cls(ddp.parameters(), **opt_kw)
    for s in range(STEPS):
        x, y = _batch(s, ws)
        lo, hi = me * SHARD, (me + 1) * SHARD
        opt.zero_grad()
        nn.functional.mse_loss(ddp(x[lo:hi]), y[lo:hi]).backward()
        opt.step()
    _check_against(ctx, ddp, _reference(ws, STEPS, opt_cls, **opt_kw), what)


@case
def ddp_sgd_matches_single_process(ctx):
    _train(ctx, {}, torch.optim.SGD, "sgd", lr=0.1)


@case
def ddp_many_buckets_adam(ctx):
    # a tiny bucket cap gives one all_reduce per parameter, several in flight
    _train(ctx, {"bucket_cap_mb": 0.0005}, torch.optim.Adam, "adam-buckets",
           lr=0.01)


@case
def ddp_no_sync_accumulation(ctx):
    # two micro-batches per step, gradients synchronised on the second only
    ws, me = ctx.world_size, ctx.rank
    ddp = DDP(_model())
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    ref = _model()
    ropt = torch.optim.SGD(ref.parameters(), lr=0.05)
    for s in range(3):
        x, y = _batch(s, ws)
        half = SHARD // 2
        lo = me * SHARD
        opt.zero_grad()
        with ddp.no_sync():
            nn.functional.mse_loss(ddp(x[lo:lo + half]),
                                   y[lo:lo + half]).backward()
        nn.functional.mse_loss(ddp(x[lo + half:lo + SHARD]),
                               y[lo + half:lo + SHARD]).backward()
        opt.step()
        # reference: same two halves of every shard, summed then averaged
        ropt.zero_grad()
        for r in range(ws):
            for a in (r * SHARD, r * SHARD + half):
                (nn.functional.mse_loss(ref(x[a:a + half]), y[a:a + half])
                 / ws).backward()
        ropt.step()
    _check_against(ctx, ddp, ref, "no_sync")


@pytest.mark.parametrize("ws,name", params(__name__))
def test_case(mp_runner, ws, name):
    mp_runner.check(__name__, ws, name)
