"""Bad input: non-contiguous tensors (a correct result or a clear error, the
same on every rank), unsupported reductions (a clear error, the group stays
usable), and mismatched calls across ranks (a RuntimeError naming the
mismatch on every rank, quickly, not a hang)."""

import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from collective_refs import check, make_input, ref_reduce
from mp_harness import case, params

GLOO_NONCONTIG = {"gloo": "gloo silently computes wrong results on strided "
                          "tensors (verified: the check below catches it)"}
GLOO_NO_MISMATCH = {"gloo": "gloo does not report mismatched calls as such "
                            "(verified: timeouts or connection errors)"}


def _agree(ctx, name, outcome):
    """Every rank must reach the same outcome ('ok' or the error class)."""
    ctx.store.set(f"agree/{name}/{ctx.rank}", outcome)
    keys = [f"agree/{name}/{r}" for r in range(ctx.world_size)]
    ctx.store.wait(keys, timedelta(seconds=ctx.op_timeout))
    got = [ctx.store.get(k).decode() for k in keys]
    assert len(set(got)) == 1, f"{name}: ranks disagree: {got}"


def _ok_or_clear_error(ctx, name, run, verify):
    """run() must either succeed (then verify()) or raise an error saying
    'contiguous'; all ranks must agree."""
    try:
        run()
    except (RuntimeError, ValueError) as e:
        assert "contiguous" in str(e).lower(), \
            f"{name}: error does not mention contiguity: {e}"
        _agree(ctx, name, "error")
        return
    verify()
    _agree(ctx, name, "ok")


def _group_still_works(ctx, what):
    t = torch.full((9,), float(ctx.rank))
    dist.all_reduce(t)
    ws = ctx.world_size
    check(t, torch.full((9,), float(ws * (ws - 1) // 2)),
          f"all_reduce after {what}")


@case(skip_on=GLOO_NONCONTIG)
def non_contiguous_all_reduce(ctx):
    ws, me = ctx.world_size, ctx.rank
    # every other element of a column-major view
    bases = [make_input(r, (50, 2), torch.float32, "nc") for r in range(ws)]
    base = bases[me].clone()
    view = base[:, 0]
    assert not view.is_contiguous()
    _ok_or_clear_error(
        ctx, "strided", lambda: dist.all_reduce(view),
        lambda: (check(base[:, 0], ref_reduce([b[:, 0] for b in bases],
                                              "SUM", torch.float32),
                       "strided all_reduce result"),
                 check(base[:, 1], bases[me][:, 1],
                       "elements between the strided ones changed")))
    # transposed 2-D (dense but not contiguous)
    mats = [make_input(r, (6, 9), torch.int64, "nct") for r in range(ws)]
    tr = mats[me].clone().t()
    assert not tr.is_contiguous()
    _ok_or_clear_error(
        ctx, "transposed", lambda: dist.all_reduce(tr, op=dist.ReduceOp.MAX),
        lambda: check(tr, ref_reduce([m.t() for m in mats], "MAX",
                                     torch.int64), "transposed result"))
    _group_still_works(ctx, "non-contiguous all_reduce")


@case(skip_on=GLOO_NONCONTIG)
def non_contiguous_broadcast_and_gather(ctx):
    ws, me = ctx.world_size, ctx.rank
    src = ws - 1
    ref = make_input(src, (20, 3), torch.float64, "ncb")
    buf = ref.clone() if me == src else torch.zeros(20, 3, dtype=torch.float64)
    view = buf[:, 1]
    _ok_or_clear_error(
        ctx, "broadcast", lambda: dist.broadcast(view, src=src),
        lambda: (check(buf[:, 1], ref[:, 1], "strided broadcast"),
                 check(buf[:, 0], ref[:, 0] if me == src else
                       torch.zeros(20, dtype=torch.float64),
                       "broadcast touched elements outside the view")))
    ins = [make_input(r, (8, 2), torch.float32, "ncag") for r in range(ws)]
    src_view = ins[me].clone()[:, 0]
    out = torch.empty(8 * ws)
    _ok_or_clear_error(
        ctx, "all_gather_into_tensor input",
        lambda: dist.all_gather_into_tensor(out, src_view),
        lambda: check(out, torch.cat([i[:, 0] for i in ins]),
                      "all_gather_into_tensor from strided input"))
    outs2 = torch.zeros(ws, 4, 2)
    outs = [outs2[r, :, 0] for r in range(ws)]  # strided outputs
    ins = [make_input(r, 4, torch.float32, "ncagl") for r in range(ws)]
    _ok_or_clear_error(
        ctx, "all_gather strided outputs",
        lambda: dist.all_gather(outs, ins[me]),
        lambda: (check(outs2[:, :, 0], torch.stack(ins),
                       "all_gather into strided outputs"),
                 check(outs2[:, :, 1], torch.zeros(ws, 4),
                       "all_gather wrote between strided outputs")))
    _group_still_works(ctx, "non-contiguous broadcast/gather")


@case
def non_contiguous_p2p(ctx):
    ws, me = ctx.world_size, ctx.rank
    right, left = (me + 1) % ws, (me - 1) % ws
    payload = make_input(me, (30, 2), torch.float32, "ncp")[:, 1]
    rbuf = torch.zeros(30, 2)
    rview = rbuf[:, 0]

    def run():
        works = [dist.isend(payload, dst=right), dist.irecv(rview, src=left)]
        for w in works:
            w.wait()

    _ok_or_clear_error(
        ctx, "p2p", run,
        lambda: (check(rbuf[:, 0], make_input(left, (30, 2), torch.float32,
                                              "ncp")[:, 1], "strided recv"),
                 check(rbuf[:, 1], torch.zeros(30), "recv wrote outside")))
    ctx.store_barrier("p2p")
    _group_still_works(ctx, "non-contiguous p2p")


@case(skip_on={"gloo": "calls the mooncake backend object itself"})
def failed_issue_leaves_output(ctx):
    # An op the engine refuses at issue raises, and its output stays as it
    # was even when the backend staged it (strided): no copy-out of a
    # staging buffer nothing wrote. (torch.distributed refuses a receive
    # from oneself before the backend; the backend object does not.)
    me = ctx.rank
    b = dist.distributed_c10d._get_default_group()._get_backend(
        torch.device("cpu"))
    base = torch.full((1000, 2), 7.0)
    with pytest.raises(Exception, match="recv"):
        b.recv([base[:, 0]], me, 0)
    assert torch.all(base == 7.0), \
        f"the refused receive wrote its output: {base[:4, 0].tolist()}"
    _group_still_works(ctx, "after the refused receive")


@case
def unsupported_reduction_is_clear_error(ctx):
    # Bitwise reductions on floating point are undefined: every rank gets a
    # prompt error naming the problem, and the group keeps working.
    t = torch.ones(10)
    t0 = time.monotonic()
    with pytest.raises((RuntimeError, ValueError)) as ei:
        dist.all_reduce(t, op=dist.ReduceOp.BAND)
    took = time.monotonic() - t0
    msg = str(ei.value).lower()
    assert any(w in msg for w in ("band", "support", "dtype", "float",
                                  "invalid")), \
        f"unclear error for BAND on float32: {ei.value}"
    assert took < 5, f"the error took {took:.2f}s"
    check(t, torch.ones(10), "failed all_reduce changed its input")
    _group_still_works(ctx, "an unsupported reduction")

    with pytest.raises((RuntimeError, ValueError)):
        dist.all_reduce(torch.ones(4, dtype=torch.float16),
                        op=dist.ReduceOp.BXOR)
    _group_still_works(ctx, "BXOR on float16")


@case
def complex_all_reduce(ctx):
    # torch hands complex tensors to backends as real views (SUM)
    ws, me = ctx.world_size, ctx.rank
    ins = [torch.complex(make_input(r, 21, torch.float32, "cre"),
                         make_input(r, 21, torch.float32, "cim"))
           for r in range(ws)]
    t = ins[me].clone()
    dist.all_reduce(t)
    ref = torch.complex(
        ref_reduce([i.real.contiguous() for i in ins], "SUM", torch.float32),
        ref_reduce([i.imag.contiguous() for i in ins], "SUM", torch.float32))
    check(t, ref, "complex64 all_reduce")


def _expect_mismatch(ctx, run):
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as ei:
        run()
    took = time.monotonic() - t0
    assert "mismatch" in str(ei.value).lower(), \
        f"error does not mention the mismatch: {ei.value}"
    assert took < ctx.op_timeout / 2, \
        f"mismatch detected only after {took:.2f}s (a timeout, not a check)"
    ctx.store_barrier("mismatch")


@case(fresh_after=True, skip_on=GLOO_NO_MISMATCH)
def mismatched_sizes_all_reduce(ctx):
    t = torch.ones(8 + ctx.rank)
    _expect_mismatch(ctx, lambda: dist.all_reduce(t))


@case(fresh_after=True, skip_on=GLOO_NO_MISMATCH)
def mismatched_sizes_broadcast(ctx):
    t = torch.ones(100 if ctx.rank == 0 else 50)
    _expect_mismatch(ctx, lambda: dist.broadcast(t, src=0))


@case(fresh_after=True, skip_on=GLOO_NO_MISMATCH)
def mismatched_dtypes(ctx):
    t = torch.ones(16, dtype=torch.float32 if ctx.rank == 0 else torch.int32)
    _expect_mismatch(ctx, lambda: dist.all_reduce(t))


@case(fresh_after=True, skip_on=GLOO_NO_MISMATCH)
def mismatched_ops(ctx):
    t = torch.ones(16)
    if ctx.rank == 0:
        _expect_mismatch(ctx, lambda: dist.broadcast(t, src=0))
    else:
        _expect_mismatch(ctx, lambda: dist.all_reduce(t))


@case(fresh_after=True, skip_on=GLOO_NO_MISMATCH)
def mismatched_reduce_ops(ctx):
    t = torch.ones(16)
    op = dist.ReduceOp.SUM if ctx.rank == 0 else dist.ReduceOp.MAX
    _expect_mismatch(ctx, lambda: dist.all_reduce(t, op=op))


def _sparse_ones(ctx):
    idx = torch.tensor([[ctx.rank, 3], [1, 2]])
    return torch.sparse_coo_tensor(idx, torch.ones(2), (8, 4))


@case(fresh_after=True, skip_on=GLOO_NO_MISMATCH)
def mismatched_sparse_reduce_ops(ctx):
    """A sparse all_reduce supports SUM only; a rank that passes another
    ReduceOp fails the call on every rank at once, naming that rank (gloo
    fails it on that rank and leaves the others waiting)."""
    odd = ctx.world_size - 1
    op = dist.ReduceOp.MAX if ctx.rank == odd else dist.ReduceOp.SUM
    t = _sparse_ones(ctx)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as ei:
        dist.all_reduce(t, op=op)
    took = time.monotonic() - t0
    msg = str(ei.value)
    assert "SUM only" in msg and f"rank {odd} passed" in msg, msg
    assert took < ctx.op_timeout / 2, f"failed only after {took:.2f}s"
    # the caller's tensor is as it was, and the group goes on
    assert torch.equal(t.to_dense(), _sparse_ones(ctx).to_dense())
    ctx.store_barrier("sparse-op")
    u = _sparse_ones(ctx)
    dist.all_reduce(u)
    ref = sum(_sparse_ones(type("R", (), {"rank": r})).to_dense()
              for r in range(ctx.world_size))
    assert torch.equal(u.to_dense(), ref), (u.to_dense(), ref)


@case(fresh_after=True, skip_on=GLOO_NO_MISMATCH)
def mismatched_p2p_size(ctx):
    ws, me = ctx.world_size, ctx.rank
    if me == 0:
        dist.isend(torch.ones(10), dst=1, tag=3).wait()
        ctx.store_barrier("mismatch")
    elif me == 1:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError) as ei:
            dist.recv(torch.empty(8), src=0, tag=3)
        assert "mismatch" in str(ei.value).lower(), str(ei.value)
        assert time.monotonic() - t0 < ctx.op_timeout / 2
        ctx.store_barrier("mismatch")
    else:
        ctx.store_barrier("mismatch")


@pytest.mark.parametrize("ws,name", params(__name__))
def test_case(mp_runner, ws, name):
    mp_runner.check(__name__, ws, name)
