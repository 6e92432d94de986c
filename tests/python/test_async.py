"""async_op=True (wait, is_completed, get_future, several in flight, really
asynchronous) and timeouts (Work.wait(timeout), the group's operation
timeout, the creation timeout when a peer never shows up)."""

import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from collective_refs import check, make_input, ref_reduce
from mp_harness import case, params


@case
def many_async_in_flight(ctx):
    ws, me = ctx.world_size, ctx.rank
    pending = []
    for i, (n, dtype) in enumerate(((0, torch.float32), (1, torch.int64),
                                    (1001, torch.float16),
                                    (1 << 16, torch.float32),
                                    (77, torch.int8), (5, torch.float64),
                                    (3, torch.bfloat16), (200, torch.int32))):
        ins = [make_input(r, n, dtype, f"async/{i}") for r in range(ws)]
        t = ins[me].clone()
        w = dist.all_reduce(t, async_op=True)
        pending.append((w, t, ref_reduce(ins, "SUM", dtype), f"all_reduce {i}"))
    ins = [make_input(r, 50, torch.float32, "async/ag") for r in range(ws)]
    ag = torch.empty(50 * ws)
    pending.append((dist.all_gather_into_tensor(ag, ins[me], async_op=True),
                    ag, torch.cat(ins), "all_gather_into_tensor"))
    ref = make_input(ws - 1, 40, torch.int64, "async/bc")
    bc = ref.clone() if me == ws - 1 else torch.zeros(40, dtype=torch.int64)
    pending.append((dist.broadcast(bc, src=ws - 1, async_op=True), bc, ref,
                    "broadcast"))
    chunks = [[make_input(r, 6, torch.float32, f"async/rs/{j}")
               for j in range(ws)] for r in range(ws)]
    rs = torch.empty(6)
    pending.append((dist.reduce_scatter_tensor(rs, torch.cat(chunks[me]),
                                               async_op=True), rs,
                    ref_reduce([chunks[r][me] for r in range(ws)], "SUM",
                               torch.float32), "reduce_scatter_tensor"))
    for w, t, ref, what in reversed(pending):
        assert w.wait() is True, f"{what}: wait() did not return True"
        # gloo's reduce_scatter_tensor Work never reports completion (a gloo
        # quirk); every other (backend, op) must.
        if not (ctx.backend == "gloo" and what == "reduce_scatter_tensor"):
            assert w.is_completed(), f"{what}: not completed after wait()"
        check(t, ref, what)


@case
def async_temporary_inputs_kept_alive(ctx):
    # The caller may drop its reference to an async op's input right after
    # issuing it (torch.cat(...) passed inline): the Work must keep the
    # tensors alive until completion.  Freed memory is then reused by new
    # allocations filled with garbage before we wait.
    ws, me = ctx.world_size, ctx.rank
    n = 4096

    def inp(r, salt):
        return make_input(r, n, torch.float32, salt)

    works, checks = [], []
    out = torch.empty(n * ws)
    works.append(dist.all_gather_into_tensor(out, inp(me, "tk/ag"),
                                             async_op=True))
    checks.append((out, torch.cat([inp(r, "tk/ag") for r in range(ws)]),
                   "all_gather_into_tensor"))
    rs = torch.empty(n)
    works.append(dist.reduce_scatter_tensor(
        rs, torch.cat([inp(me, f"tk/rs/{j}") for j in range(ws)]),
        async_op=True))
    checks.append((rs, ref_reduce([inp(r, f"tk/rs/{me}") for r in range(ws)],
                                  "SUM", torch.float32),
                   "reduce_scatter_tensor"))
    a2a = torch.empty(n * ws)
    works.append(dist.all_to_all_single(
        a2a, torch.cat([inp(me, f"tk/a2a/{j}") for j in range(ws)]),
        async_op=True))
    checks.append((a2a, torch.cat([inp(i, f"tk/a2a/{me}") for i in range(ws)]),
                   "all_to_all_single"))
    outs = [torch.empty(n) for _ in range(ws)]
    works.append(dist.all_gather(outs, inp(me, "tk/agl"), async_op=True))
    checks += [(outs[r], inp(r, "tk/agl"), f"all_gather slot {r}")
               for r in range(ws)]
    right, left = (me + 1) % ws, (me - 1) % ws
    rbuf = torch.empty(n)
    works.append(dist.irecv(rbuf, src=left, tag=77))
    works.append(dist.isend(inp(me, "tk/p2p"), dst=right, tag=77))
    checks.append((rbuf, inp(left, "tk/p2p"), "isend of a temporary"))
    junk = [torch.full((n * ws,), 1e30) for _ in range(16)]
    junk += [torch.full((n,), -1e30) for _ in range(16)]
    for w in works:
        w.wait()
    del junk
    for t, ref, what in checks:
        check(t, ref, what)


@case
def async_is_really_asynchronous(ctx):
    # The last rank joins 0.6 s late: an async all_reduce must return at once
    # and report not-completed until the late rank has joined.
    ws, me = ctx.world_size, ctx.rank
    late = ws - 1
    ctx.store_barrier("start")
    t = torch.full((1000,), float(me))
    ref = torch.full((1000,), float(ws * (ws - 1) // 2))
    if me == late:
        time.sleep(0.6)
        dist.all_reduce(t)
        check(t, ref, "late rank result")
        return
    t0 = time.monotonic()
    w = dist.all_reduce(t, async_op=True)
    issued = time.monotonic() - t0
    assert issued < 0.3, f"async all_reduce took {issued:.3f}s to return"
    assert not w.is_completed(), "completed before the late rank joined"
    deadline = time.monotonic() + ctx.op_timeout
    while not w.is_completed():
        assert time.monotonic() < deadline, "is_completed() never became True"
        time.sleep(0.005)
    took = time.monotonic() - t0
    assert took > 0.3, f"completed after {took:.3f}s, before the late rank"
    w.wait()
    check(t, ref, "async result after polling is_completed()")


def _wait_equal(t, ref, what, timeout):
    deadline = time.monotonic() + timeout
    while not torch.equal(t, ref):
        assert time.monotonic() < deadline, \
            f"{what}: no result {timeout:.0f} s after its Work was dropped"
        time.sleep(0.005)


@case(skip_on={"gloo": "gloo's collectives take only contiguous tensors"})
def dropped_works_still_deliver(ctx):
    # Works dropped at once, never waited for and never asked for a future:
    # the ops still run to their end and deliver their results, copy-out of
    # a staged (non-contiguous) output included, and the tensors they use
    # stay alive meanwhile (torch frees the caller's temporaries at once).
    ws, me = ctx.world_size, ctx.rank
    right, left = (me + 1) % ws, (me - 1) % ws
    n = 3000
    ins = [make_input(r, n, torch.float32, "drop/ar") for r in range(ws)]
    base = torch.zeros(n, 2)
    view = base[:, 1]  # strided: the engine works on a staged copy
    view.copy_(ins[me])
    dist.all_reduce(view, async_op=True)  # the Work goes at once
    ref = ref_reduce(ins, "SUM", torch.float32)
    # point-to-point: a dropped receive into a strided tensor, a dropped
    # send of a temporary
    rb = torch.zeros(n, 3)
    rview = rb[:, 2]
    dist.irecv(rview, src=left, tag=5)
    dist.isend(make_input(me, n, torch.float32, "drop/p2p") * 1, dst=right,
               tag=5)
    # garbage into whatever the temporaries' memory was
    junk = [torch.full((n,), -1e30) for _ in range(16)]
    _wait_equal(view, ref, "dropped all_reduce", ctx.op_timeout)
    _wait_equal(rview, make_input(left, n, torch.float32, "drop/p2p"),
                "dropped irecv", ctx.op_timeout)
    assert torch.all(base[:, 0] == 0), "dropped all_reduce wrote outside"
    assert torch.all(rb[:, :2] == 0), "dropped irecv wrote outside"
    del junk
    # the group goes on
    t = torch.full((10,), float(me))
    dist.all_reduce(t)
    check(t, torch.full((10,), float(ws * (ws - 1) // 2)), "after the drops")


@case
def get_future_values(ctx):
    ws, me = ctx.world_size, ctx.rank
    ins = [make_input(r, 64, torch.float32, "fut") for r in range(ws)]
    t = ins[me].clone()
    w = dist.all_reduce(t, async_op=True)
    fut = w.get_future()
    chained = fut.then(lambda f: f.value()[0] * 2)
    val = fut.wait()
    ref = ref_reduce(ins, "SUM", torch.float32)
    assert isinstance(val, list) and len(val) == 1, \
        f"future value of all_reduce: {type(val)} {val!r:.200}"
    check(val[0], ref, "future value")
    check(t, ref, "tensor after future.wait()")
    check(chained.wait(), ref * 2, "chained future")
    assert fut.done()
    # several futures in flight, collected with collect_all
    ts = [torch.full((10,), float(me + i)) for i in range(4)]
    futs = [dist.all_reduce(x, async_op=True).get_future() for x in ts]
    torch.futures.collect_all(futs).wait()
    for i, x in enumerate(ts):
        check(x, torch.full((10,), float(ws * (ws - 1) // 2 + ws * i)),
              f"collect_all tensor {i}")
    # future of a broadcast
    b = torch.full((5,), 7.0) if me == 0 else torch.zeros(5)
    bv = dist.broadcast(b, src=0, async_op=True).get_future().wait()
    check(b, torch.full((5,), 7.0), "broadcast via future")
    assert isinstance(bv, list) and torch.equal(bv[0], b)


@case(fresh_after=True)
def wait_timeout_raises(ctx):
    # The last rank does not call the all_reduce until the others' wait
    # (timeout=1s) has raised; the raise must come after about 1 s.
    ws, me = ctx.world_size, ctx.rank
    late = ws - 1
    # A group with a short operation timeout, so that what is left pending
    # (on backends that keep it) is cleaned up quickly when it is destroyed.
    g = dist.new_group(list(range(ws)), timeout=timedelta(seconds=4))
    if me != late:
        t = torch.ones(100)
        w = dist.all_reduce(t, group=g, async_op=True)
        t0 = time.monotonic()
        with pytest.raises(RuntimeError) as ei:
            w.wait(timeout=timedelta(seconds=1))
        took = time.monotonic() - t0
        assert 0.8 < took < 5, f"wait(timeout=1s) raised after {took:.2f}s"
        msg = str(ei.value).lower()
        assert "time" in msg, f"timeout error does not say so: {ei.value}"
    ctx.store_barrier("timed_out")


@case(fresh_after=True)
def wait_timeout_then_complete(ctx):
    # After a wait() that timed out, the operation is still pending: when the
    # late rank joins, a second wait() completes with the right result.
    ws, me = ctx.world_size, ctx.rank
    late = ws - 1
    t = torch.full((100,), float(me))
    ref = torch.full((100,), float(ws * (ws - 1) // 2))
    if me != late:
        w = dist.all_reduce(t, async_op=True)
        with pytest.raises(RuntimeError):
            w.wait(timeout=timedelta(seconds=0.5))
        ctx.store_barrier("timed_out")
        w.wait()
        check(t, ref, "result after the late rank joined")
    else:
        ctx.store_barrier("timed_out")
        dist.all_reduce(t)
        check(t, ref, "late rank result")


@case(fresh_after=True)
def group_op_timeout_honoured(ctx):
    # new_group(timeout=2s): a blocking op whose peer never calls raises
    # after about 2 s, not after the default timeout and not never.
    ws, me = ctx.world_size, ctx.rank
    g = dist.new_group(list(range(ws)), timeout=timedelta(seconds=2))
    t = torch.ones(10)
    dist.all_reduce(t, group=g)  # the group works
    check(t, torch.full((10,), float(ws)), "all_reduce on the group")
    if me != ws - 1:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError) as ei:
            dist.all_reduce(t, group=g)
        took = time.monotonic() - t0
        assert 1.5 < took < 8, f"2s op timeout raised after {took:.2f}s"
        assert "time" in str(ei.value).lower(), \
            f"timeout error does not say so: {ei.value}"
    ctx.store_barrier("done", timeout=30)


@case(fresh_after=True)
def group_creation_timeout_honoured(ctx):
    # The last rank never creates the group: the others' new_group(timeout=
    # 2s) must fail within a few seconds instead of hanging.
    ws, me = ctx.world_size, ctx.rank
    if me != ws - 1:
        t0 = time.monotonic()
        with pytest.raises(Exception):
            g = dist.new_group(list(range(ws)), timeout=timedelta(seconds=2))
            # backends may create lazily: the first op must then fail
            dist.all_reduce(torch.ones(4), group=g)
        took = time.monotonic() - t0
        assert took < 10, f"group creation gave up after {took:.2f}s"
    ctx.store_barrier("done", timeout=30)


@pytest.mark.parametrize("ws,name", params(__name__))
def test_case(mp_runner, ws, name):
    mp_runner.check(__name__, ws, name)
