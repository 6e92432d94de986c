"""Fault tolerance through torch: the view API (mooncake.get_active_ranks,
get_epoch, get_failed_ranks, recover, set_auto_recover, shrink), views with
holes after mooncake.shrink, and real rank failures (a worker SIGKILLs
itself between two collectives or in the middle of a loop of large ones):
auto mode keeps the survivors going with results over exactly the active
ranks, identical on every survivor; manual mode raises
mooncake.RankFailureError naming the failed ranks until mooncake.recover.

Cases that kill a rank run on a pool of their own (@case(kills=True)).
References are computed locally from deterministic per-rank inputs
(collective_refs), never taken from the backend.
"""

import hashlib
import os
import random
import signal
import threading
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import mooncake
from collective_refs import check, make_input, ref_reduce
from mp_harness import case, params

NOT_GLOO = {"gloo": "the view and fault API is mooncake's own"}


def _mooncake_only(ctx):
    if ctx.backend != "mooncake":
        pytest.skip("the view and fault API is mooncake's own")


def _digest(t):
    return hashlib.sha1(t.contiguous().view(torch.uint8).numpy().tobytes()
                        ).hexdigest()


def _same_on(ctx, ranks, name, value):
    """Every rank in `ranks` (this one included) must hold the same string
    value; exchanged through the harness' store, not the backend."""
    ctx.store.set(f"same/{name}/{ctx.rank}", value)
    keys = [f"same/{name}/{r}" for r in ranks]
    ctx.store.wait(keys, timedelta(seconds=ctx.op_timeout))
    got = {r: ctx.store.get(k).decode() for r, k in zip(ranks, keys)}
    assert len(set(got.values())) == 1, f"{name}: ranks disagree: {got}"


def _check_view(what, epoch, active, failed, group=None):
    assert mooncake.get_epoch(group) == epoch, \
        f"{what}: epoch {mooncake.get_epoch(group)}, expected {epoch}"
    assert mooncake.get_active_ranks(group) == active, \
        f"{what}: active {mooncake.get_active_ranks(group)}, expected {active}"
    assert mooncake.get_failed_ranks(group) == failed, \
        f"{what}: failed {mooncake.get_failed_ranks(group)}, expected {failed}"


def _ops_over(ctx, active, salt, group=None, async_op=False):
    """all_reduce (SUM, AVG), all_gather (list and tensor) and barrier over a
    view whose active ranks are `active`; results checked against local
    references. Returns the SUM result's digest (for cross-rank checks)."""
    ws, me = ctx.world_size, ctx.rank

    def run(work):
        if async_op:
            assert work.wait() is True

    ins = [make_input(r, 1000, torch.float32, f"{salt}/sum") for r in range(ws)]
    t = ins[me].clone()
    run(dist.all_reduce(t, group=group, async_op=async_op))
    check(t, ref_reduce([ins[r] for r in active], "SUM", torch.float32),
          f"{salt}: all_reduce SUM over {active}")
    dig = _digest(t)

    ins = [make_input(r, 40, torch.float64, f"{salt}/avg") for r in range(ws)]
    a = ins[me].clone()
    run(dist.all_reduce(a, op=dist.ReduceOp.AVG, group=group,
                        async_op=async_op))
    check(a, ref_reduce([ins[r] for r in active], "AVG", torch.float64),
          f"{salt}: all_reduce AVG over {active} (divides by {len(active)})",
          op="AVG")

    ins = [make_input(r, 7, torch.int64, f"{salt}/ag") for r in range(ws)]
    outs = [torch.full((7,), -99, dtype=torch.int64) for _ in range(ws)]
    run(dist.all_gather(outs, ins[me], group=group, async_op=async_op))
    for r in range(ws):
        want = ins[r] if r in active else torch.zeros(7, dtype=torch.int64)
        check(outs[r], want, f"{salt}: all_gather slot {r} "
              f"({'active' if r in active else 'inactive: zero-filled'})")

    flat = torch.full((5 * ws,), 7.5)
    ins = [make_input(r, 5, torch.float32, f"{salt}/agt") for r in range(ws)]
    run(dist.all_gather_into_tensor(flat, ins[me], group=group,
                                    async_op=async_op))
    check(flat, torch.cat([ins[r] if r in active else torch.zeros(5)
                           for r in range(ws)]),
          f"{salt}: all_gather_into_tensor over {active}")

    run(dist.barrier(group=group, async_op=async_op))
    return dig


# ---------------------------------------------------------------------------
# (a) the view API without failures
# ---------------------------------------------------------------------------


@case(skip_on=NOT_GLOO)
def view_api_basics(ctx):
    _mooncake_only(ctx)
    ws, me = ctx.world_size, ctx.rank
    _check_view("fresh group", 1, list(range(ws)), [])
    env = os.environ.get("MOONCAKE_AUTO_RECOVER")
    assert mooncake.get_auto_recover() == (env is None or env != "0")
    assert mooncake.recover() == list(range(ws)), "recover() with nothing " \
        "pending must be a no-op returning every rank"
    assert mooncake.get_epoch() == 1

    mooncake.set_auto_recover(False)
    assert mooncake.get_auto_recover() is False
    mooncake.set_auto_recover(True)
    assert mooncake.get_auto_recover() is True

    # a subgroup: ranks are group-local
    sub = list(range(1, ws)) if ws > 2 else [0, 1]
    g = dist.new_group(sub)
    if me in sub:
        _check_view("subgroup", 1, list(range(len(sub))), [], group=g)
    else:
        with pytest.raises(ValueError, match="not a member"):
            mooncake.get_epoch(g)

    # not a mooncake group / not a group at all
    pg = dist.ProcessGroup(ctx.store, 0, 1)  # no backend registered
    with pytest.raises(TypeError, match="mooncake"):
        mooncake.get_active_ranks(pg)
    with pytest.raises(TypeError, match="ProcessGroup"):
        mooncake.get_epoch("world")

    # invalid shrink lists fail locally, before any communication
    with pytest.raises(ValueError, match="out of range"):
        mooncake.shrink([ws])
    with pytest.raises(ValueError, match="duplicate"):
        mooncake.shrink([0, 0])
    _check_view("after rejected shrinks", 1, list(range(ws)), [])

    # the group still works and the view did not change
    _ops_over(ctx, list(range(ws)), "basics")
    _check_view("after ops", 1, list(range(ws)), [])


@case(skip_on=NOT_GLOO)
def subgroup_ignores_world_env(ctx):
    # MOONCAKE_INITIAL_SIZE and MOONCAKE_JOIN are about the world group
    # (init_process_group's); a later new_group is created whole even when
    # they are still set in the environment, as in a replacement process.
    _mooncake_only(ctx)
    ws, me = ctx.world_size, ctx.rank
    saved = {k: os.environ.get(k)
             for k in ("MOONCAKE_INITIAL_SIZE", "MOONCAKE_JOIN")}
    os.environ["MOONCAKE_INITIAL_SIZE"] = str(ws)
    os.environ["MOONCAKE_JOIN"] = "1"
    try:
        g = dist.new_group([0, 1])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if me < 2:
        _check_view("subgroup", 1, [0, 1], [], group=g)
        t = torch.full((16,), float(me + 1))
        dist.all_reduce(t, group=g)
        assert torch.equal(t, torch.full((16,), 3.0)), f"all_reduce: {t[:4]}"


@case(skip_on=NOT_GLOO)
def view_api_under_debug_detail(ctx):
    # TORCH_DISTRIBUTED_DEBUG=DETAIL wraps a group's backend in torch's
    # _ProcessGroupWrapper: the view API looks through it.
    _mooncake_only(ctx)
    ws = ctx.world_size
    old = dist.get_debug_level()
    dist.set_debug_level(dist.DebugLevel.DETAIL)
    try:
        g = dist.new_group(list(range(ws)))
    finally:
        dist.set_debug_level(old)
    assert mooncake.get_active_ranks(g) == list(range(ws))
    assert mooncake.get_epoch(g) == 1
    t = torch.ones(8)
    dist.all_reduce(t, group=g)
    assert torch.equal(t, torch.full((8,), float(ws)))


@case(skip_on=NOT_GLOO, fresh_after=True, world_sizes=(2,))
def blocking_op_keeps_backend_timeout(ctx):
    # A timeout set on the backend (torch's Backend.set_timeout;
    # _set_pg_timeout reaches gloo and nccl only) bounds blocking
    # collectives too, not only Work.wait of async ones.
    _mooncake_only(ctx)
    if ctx.rank == 0:
        b = dist.distributed_c10d._get_default_group()._get_backend(
            torch.device("cpu"))
        b.set_timeout(timedelta(seconds=1))
        t0 = time.monotonic()
        with pytest.raises(dist.DistBackendError, match="[Tt]ime"):
            dist.all_reduce(torch.ones(4))  # rank 1 never calls it
        took = time.monotonic() - t0
        assert took < min(5.0, ctx.op_timeout / 2), \
            f"the blocking all_reduce took {took:.1f} s with a 1 s timeout"
    ctx.store_barrier("timeout-done")


def test_api_without_process_group():
    # Needs no workers: the functions say what is wrong before
    # init_process_group.
    assert not dist.is_initialized()
    for fn in (mooncake.get_active_ranks, mooncake.get_epoch,
               mooncake.get_failed_ranks, mooncake.recover):
        with pytest.raises(ValueError, match="init_process_group"):
            fn()
    assert issubclass(mooncake.RankFailureError, dist.DistBackendError)
    assert issubclass(mooncake.RankFailureError, RuntimeError)
    assert issubclass(mooncake.EvictedError, dist.DistBackendError)
    e = mooncake.RankFailureError("x", [3, 1])
    assert e.failed_ranks == [3, 1] and str(e) == "x"
    import pickle
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is mooncake.RankFailureError and e2.failed_ranks == [3, 1]


# ---------------------------------------------------------------------------
# (b) shrink: a view with a hole, without killing anything
# ---------------------------------------------------------------------------


@case(skip_on=NOT_GLOO, fresh_after=True)
def shrink_removes_rank(ctx):
    _mooncake_only(ctx)
    ws, me = ctx.world_size, ctx.rank
    gone = 1
    active = [r for r in range(ws) if r != gone]
    _ops_over(ctx, list(range(ws)), "before")
    mooncake.shrink([gone])
    if me == gone:
        # evicted: every later operation raises EvictedError
        t = torch.ones(8)
        with pytest.raises(mooncake.EvictedError, match="removed|evicted"):
            dist.all_reduce(t)
        check(t, torch.ones(8), "a failed all_reduce changed its input")
        with pytest.raises(mooncake.EvictedError):
            dist.all_reduce(t, async_op=True).wait()
        with pytest.raises(mooncake.EvictedError):
            dist.barrier()
        with pytest.raises(mooncake.EvictedError):
            mooncake.recover()
        assert gone not in mooncake.get_active_ranks()
        ctx.store_barrier("done")
        return

    _check_view("after shrink", 2, active, [gone])
    digs = [_ops_over(ctx, active, "after")]
    # broadcast from an active root: everyone active gets the data
    src = active[-1]
    ref = make_input(src, 21, torch.float32, "bc")
    t = ref.clone() if me == src else torch.zeros(21)
    dist.broadcast(t, src=src)
    check(t, ref, f"broadcast from active rank {src}")
    # broadcast from the removed rank: a clear error on every survivor
    t = torch.full((4,), 3.0)
    with pytest.raises(RuntimeError, match="(?i)root") as ei:
        dist.broadcast(t, src=gone)
    assert not isinstance(ei.value, mooncake.RankFailureError), \
        "an inactive root is not a rank failure of this operation"
    assert str(gone) in str(ei.value), f"error does not name rank {gone}: " \
        f"{ei.value}"
    # the group goes on; async ops too
    digs.append(_ops_over(ctx, active, "after-root-error", async_op=True))
    _check_view("end", 2, active, [gone])
    _same_on(ctx, active, "digests", ",".join(digs))
    ctx.store_barrier("done")


# ---------------------------------------------------------------------------
# (c) a rank dies; auto mode (the default)
# ---------------------------------------------------------------------------


@case(skip_on=NOT_GLOO, kills=True)
def kill_between_calls_auto(ctx):
    _mooncake_only(ctx)
    ws, me = ctx.world_size, ctx.rank
    victim = 1
    survivors = [r for r in range(ws) if r != victim]
    assert mooncake.get_auto_recover()
    _ops_over(ctx, list(range(ws)), "before")
    # every rank has finished the calls above before the victim dies
    ctx.store_barrier("before-kill")
    if me == victim:
        ctx.die()
    t0 = time.monotonic()
    ins = [make_input(r, 4096, torch.float32, "first-after") for r in
           range(ws)]
    t = ins[me].clone()
    dist.all_reduce(t)  # runs into the failure, completes over survivors
    took = time.monotonic() - t0
    check(t, ref_reduce([ins[r] for r in survivors], "SUM", torch.float32),
          "the all_reduce interrupted by the failure (survivors only)")
    assert took < ctx.op_timeout / 2, f"recovery took {took:.2f}s"
    _check_view("after the failure", 2, survivors, [victim])
    digs = [_digest(t)]
    for i in range(3):
        digs.append(_ops_over(ctx, survivors, f"after/{i}"))
    _check_view("end", 2, survivors, [victim])
    _same_on(ctx, survivors, "digests", ",".join(digs))
    print(f"[fault] rank {me}: first call after the kill took {took:.3f}s")


@case(skip_on=NOT_GLOO, kills=True, world_sizes=(2, 4))
def kill_then_idle_auto(ctx):
    """Half the group dies while the survivors compute for longer than the
    liveness timeout (3 s by default; with etcd also the lease TTL, 2 s):
    at their next call they find the dead ranks silent before any transport
    end was read. Suspicion alone has no majority here; the death is
    evidence all the same, so the call completes over the survivors."""
    _mooncake_only(ctx)
    ws, me = ctx.world_size, ctx.rank
    victims = list(range(ws // 2, ws))
    survivors = [r for r in range(ws) if r not in victims]
    _ops_over(ctx, list(range(ws)), "before")
    ctx.store_barrier("before-kill")
    if me in victims:
        ctx.die()
    time.sleep(3.5)  # "compute": no calls into the backend
    ins = [make_input(r, 4096, torch.float32, "after-idle") for r in
           range(ws)]
    t = ins[me].clone()
    dist.all_reduce(t)
    check(t, ref_reduce([ins[r] for r in survivors], "SUM", torch.float32),
          "the first all_reduce after the idle time (survivors only)")
    _check_view("after the idle time", 2, survivors, victims)
    digs = [_digest(t), _ops_over(ctx, survivors, "after-idle/1")]
    _same_on(ctx, survivors, "idle-digests", ",".join(digs))


def _loop_with_kill(ctx, victim, async_op, salt, n=1 << 20, after=5,
                    limit_s=60.0):
    """Every rank loops over large all_reduces; the victim SIGKILLs itself
    from a timer thread while its main thread is inside the loop. Survivors
    go on until `after` iterations completed without the victim. Iteration
    i's input is base[rank] + i, so each result must be exactly the full sum
    (before the failure) or the survivors' sum (from the interrupted
    iteration on), switching once, at the same iteration on every
    survivor."""
    ws, me = ctx.world_size, ctx.rank
    survivors = [r for r in range(ws) if r != victim]
    base = [make_input(r, n, torch.float32, salt) for r in range(ws)]
    full = torch.stack(base).sum(0)
    part = torch.stack([base[r] for r in survivors]).sum(0)
    ctx.store_barrier("start")
    if me == victim:
        delay = random.Random(f"{salt}/{os.getpid()}").uniform(0.15, 0.6)
        threading.Timer(delay, ctx.die).start()
    deadline = time.monotonic() + limit_s
    kinds = []
    i = 0
    inflight = []

    def finish(w, t, i):
        if w is not None:
            assert w.wait() is True
        if torch.equal(t, full + i * ws):
            kinds.append("F")
        elif torch.equal(t, part + i * (ws - 1)):
            kinds.append("S")
        else:
            raise AssertionError(
                f"iteration {i}: the result is neither the sum over all "
                f"{ws} ranks nor over the survivors {survivors} "
                f"(first element {t[0].item()}, expected "
                f"{(full[0] + i * ws).item()} or "
                f"{(part[0] + i * (ws - 1)).item()})")

    while True:
        assert time.monotonic() < deadline, \
            f"no {after} iterations after the failure within {limit_s}s " \
            f"(results so far: {''.join(kinds)})"
        if me != victim and kinds.count("S") >= after:
            break
        t = base[me] + i
        if async_op:
            inflight.append((dist.all_reduce(t, async_op=True), t, i))
            if len(inflight) == 2:  # two operations in flight at a time
                finish(*inflight.pop(0))
        else:
            dist.all_reduce(t)
            finish(None, t, i)
        i += 1
    for w, t, j in inflight:
        finish(w, t, j)
    seq = "".join(kinds)
    assert "SF" not in seq, f"full results after survivor-only ones: {seq}"
    assert "S" in seq, f"no iteration ran without the victim: {seq}"
    _check_view("after the loop", 2, survivors, [victim])
    _same_on(ctx, survivors, "kinds", seq)
    _ops_over(ctx, survivors, f"{salt}/after", async_op=async_op)
    print(f"[fault] rank {me}: {len(seq)} iterations: {seq}")


def _sparse_base(r, nnz, seed):
    """Rank r's sparse COO input: random (overlapping) rows of a 4096 x 64
    matrix, small integer values (their float sums are exact)."""
    g = torch.Generator().manual_seed(seed * 131 + r)
    idx = torch.stack([torch.randint(0, 4096, (nnz,), generator=g),
                       torch.randint(0, 64, (nnz,), generator=g)])
    val = torch.randint(-50, 50, (nnz,), generator=g).to(torch.float32)
    return torch.sparse_coo_tensor(idx, val, (4096, 64)).coalesce()


@case(skip_on=NOT_GLOO, kills=True, world_sizes=(3,))
def kill_mid_sparse_loop_auto(ctx):
    """A loop of sparse all_reduces (two collectives each: the shapes, then
    the entries) while a rank dies: every result is the dense sum over all
    ranks or over the survivors, switching once, the same on every
    survivor."""
    _mooncake_only(ctx)
    ws, me, victim = ctx.world_size, ctx.rank, 2
    survivors = [r for r in range(ws) if r != victim]
    base = [_sparse_base(r, 60000, 7) for r in range(ws)]
    full = sum(b.to_dense() for b in base)
    part = sum(base[r].to_dense() for r in survivors)
    ctx.store_barrier("start")
    if me == victim:
        delay = random.Random(f"sparse/{os.getpid()}").uniform(0.1, 0.4)
        threading.Timer(delay, ctx.die).start()
    deadline = time.monotonic() + 60
    kinds = ""
    i = 0
    while me == victim or kinds.count("S") < 3:
        assert time.monotonic() < deadline, f"results so far: {kinds}"
        t = base[me] * 1.0
        dist.all_reduce(t)
        d = t.to_dense()
        if torch.equal(d, full):
            kinds += "F"
        elif torch.equal(d, part):
            kinds += "S"
        else:
            raise AssertionError(f"iteration {i}: neither the sum over all "
                                 f"ranks nor over {survivors}")
        i += 1
    assert "SF" not in kinds and "S" in kinds, kinds
    _check_view("after the sparse loop", 2, survivors, [victim])
    _same_on(ctx, survivors, "sparse-kinds", kinds)
    print(f"[fault] rank {me}: {len(kinds)} sparse all_reduces: {kinds}")


@case(skip_on=NOT_GLOO, kills=True, world_sizes=(3, 4))
def kill_mid_loop_auto(ctx):
    _mooncake_only(ctx)
    _loop_with_kill(ctx, victim=1, async_op=False, salt="loop1")


@case(skip_on=NOT_GLOO, kills=True, world_sizes=(4,))
def kill_rank0_mid_loop_auto(ctx):
    _mooncake_only(ctx)
    _loop_with_kill(ctx, victim=0, async_op=False, salt="loop0")


# ---------------------------------------------------------------------------
# (e) auto mode with async_op=True
# ---------------------------------------------------------------------------


@case(skip_on=NOT_GLOO, kills=True, world_sizes=(4,))
def kill_mid_async_loop_auto(ctx):
    _mooncake_only(ctx)
    _loop_with_kill(ctx, victim=2, async_op=True, salt="aloop")


# ---------------------------------------------------------------------------
# (d) manual mode
# ---------------------------------------------------------------------------


def _expect_rank_failure(what, victim, run):
    t0 = time.monotonic()
    with pytest.raises(mooncake.RankFailureError) as ei:
        run()
    e = ei.value
    assert isinstance(e, dist.DistBackendError) and isinstance(e, RuntimeError)
    assert e.failed_ranks == [victim], \
        f"{what}: failed_ranks {e.failed_ranks}, expected [{victim}]: {e}"
    return time.monotonic() - t0, e


def _wait_stopped(pid, timeout):
    """Until process pid is stopped (state T in /proc/pid/stat)."""
    t0 = time.monotonic()
    while True:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        assert time.monotonic() - t0 < timeout, f"pid {pid} did not stop"
        time.sleep(0.005)


def _stop_mid_send(ctx, victim, n, barrier):
    """After the store barrier `barrier`, the victim isends n float32 to
    rank 1 (partly written: rank 1 reads nothing meanwhile) and stops
    itself (SIGSTOP; SIGCONT makes it die); the others get its pid once it
    is stopped."""
    ctx.store_barrier(barrier)
    if ctx.rank == victim:
        ctx.store.set("victim-pid", str(os.getpid()))
        sbuf = torch.full((n,), 2.0)
        dist.isend(sbuf, dst=1)
        ctx.stop_then_die()
    pid = int(ctx.store.get("victim-pid"))
    _wait_stopped(pid, ctx.op_timeout)
    return pid


@case(skip_on=NOT_GLOO, kills=True, world_sizes=(3,))
def stopped_peer_p2p(ctx):
    """Point-to-point with a rank that hangs (SIGSTOP): rank 0's isend of
    16 MiB to it and rank 1's irecv of 16 MiB whose message was arriving
    from it raise DistBackendError naming it once the survivors' view drops
    it (the all_reduce loop finds it silent) or once the heartbeat finds it
    silent, whichever comes first, not never; their tensors are
    theirs again. (p2p errors are not RankFailureError, which is the
    collectives' manual-mode error.)"""
    _mooncake_only(ctx)
    me, victim, survivors = ctx.rank, 2, [0, 1]
    _ops_over(ctx, [0, 1, 2], "before")
    n = 4 << 20  # float32: 16 MiB, more than the rings or sockets hold
    # rank 1 posts its receive only once the victim stopped: a receive
    # posted before would be moved by the backend's progress thread (torch
    # works are watched) and could take the whole message before the stop
    pid = _stop_mid_send(ctx, victim, n, "posted")
    if me == 1:
        rbuf = torch.zeros(n)
        rw = dist.irecv(rbuf, src=victim)
    if me == 0:
        sbuf = torch.full((n,), 1.0)
        sw = dist.isend(sbuf, dst=victim)
    t0 = time.monotonic()
    while mooncake.get_active_ranks() != survivors:
        t = torch.ones(4)
        dist.all_reduce(t)
        assert time.monotonic() - t0 < ctx.op_timeout, "the view kept rank 2"
    what = "isend to the stopped rank" if me == 0 else \
        "irecv from the stopped rank (its message half there)"
    t1 = time.monotonic()
    with pytest.raises(dist.DistBackendError) as ei:
        (sw if me == 0 else rw).wait()
    took, e = time.monotonic() - t1, ei.value
    # the view change, or the heartbeat first: the backend's progress thread
    # checks its watched requests while the all_reduce loop runs
    assert "rank 2" in str(e) and ("removed from the view" in str(e) or
                                   "suspected failed" in str(e)), str(e)
    assert took < 2.0, f"{what}: ended {took:.2f}s after the view change"
    print(f"[fault] rank {me}: {what} raised {took * 1e3:.0f} ms after the "
          f"view change: {e}")
    # the group goes on without it
    _ops_over(ctx, survivors, "after-stop")
    if me == 0:
        os.kill(pid, signal.SIGCONT)  # it ends itself (SIGKILL)


@case(skip_on=NOT_GLOO, kills=True, world_sizes=(3,))
def silent_peer_p2p(ctx):
    """Point-to-point with a rank that hangs (SIGSTOP) while no collective
    runs: rank 0's blocking send of 16 MiB to it and rank 1's blocking recv
    of its 16 MiB message, partly there, raise DistBackendError saying it
    is silent within the liveness timeout (3 s) of its stop; before, they
    waited for good (p2p runs no agreement, and only an agreement removes
    a rank). The tensors are theirs again, and the group goes on: its next
    collectives find the rank silent and drop it."""
    _mooncake_only(ctx)
    me, victim, survivors = ctx.rank, 2, [0, 1]
    _ops_over(ctx, [0, 1, 2], "before")
    n = 4 << 20  # float32: 16 MiB, more than the rings or sockets hold
    pid = _stop_mid_send(ctx, victim, n, "ready")
    t0 = time.monotonic()
    buf = torch.full((n,), 1.0) if me == 0 else torch.zeros(n)
    what = "send to the stopped rank" if me == 0 else \
        "recv from the stopped rank (its message partly there)"
    with pytest.raises(dist.DistBackendError) as ei:
        if me == 0:
            dist.send(buf, dst=victim)
        else:
            dist.recv(buf, src=victim)
    took, e = time.monotonic() - t0, ei.value
    assert "rank 2" in str(e) and "silent" in str(e), str(e)
    # liveness timeout 3 s, counted from its last heartbeat (before the stop)
    assert took < 3.0 + 1.5, f"{what}: ended {took:.2f}s after the stop"
    print(f"[fault] rank {me}: {what} raised {took * 1e3:.0f} ms after the "
          f"stop was seen: {e}")
    buf.fill_(7.0)  # ours again
    t1 = time.monotonic()
    while mooncake.get_active_ranks() != survivors:
        t = torch.ones(4)
        dist.all_reduce(t)
        assert time.monotonic() - t1 < ctx.op_timeout, "the view kept rank 2"
    _ops_over(ctx, survivors, "after-stop")
    if me == 0:
        os.kill(pid, signal.SIGCONT)  # it ends itself (SIGKILL)


@case(skip_on=NOT_GLOO, kills=True, world_sizes=(3, 4))
def kill_manual_mode(ctx):
    _mooncake_only(ctx)
    ws, me = ctx.world_size, ctx.rank
    victim = ws - 1
    survivors = [r for r in range(ws) if r != victim]
    mooncake.set_auto_recover(False)
    assert not mooncake.get_auto_recover()
    _ops_over(ctx, list(range(ws)), "before")
    ctx.store_barrier("before-kill")
    if me == victim:
        ctx.die()
    t = torch.full((1000,), float(me + 1))
    took, e = _expect_rank_failure("the interrupted all_reduce", victim,
                                   lambda: dist.all_reduce(t))
    assert took < ctx.op_timeout / 2, f"the failure took {took:.2f}s"
    assert str(victim) in str(e), f"message does not name rank {victim}: {e}"
    # a failed call leaves its in-place input as it was, so the same call
    # can run again after recover (below)
    assert torch.equal(t, torch.full((1000,), float(me + 1))), \
        f"the failed all_reduce changed its in-place tensor: {t[:4]}"
    assert mooncake.get_failed_ranks() == [victim]
    # until recover, every collective fails the same way (async: at wait)
    _expect_rank_failure("a later all_reduce", victim,
                         lambda: dist.all_reduce(t, async_op=True).wait())
    _expect_rank_failure("a later barrier", victim, lambda: dist.barrier())
    assert mooncake.recover() == survivors
    _check_view("after recover", 2, survivors, [victim])
    dist.all_reduce(t)  # the interrupted call again, over the survivors
    want = float(sum(r + 1 for r in survivors))
    assert torch.equal(t, torch.full((1000,), want)), \
        f"all_reduce again after recover: {t[:4]}, expected {want}"
    digs = [_ops_over(ctx, survivors, "after"),
            _ops_over(ctx, survivors, "after-async", async_op=True)]
    _same_on(ctx, survivors, "digests", ",".join(digs))
    assert mooncake.recover() == survivors  # nothing pending: a no-op


@case(skip_on=NOT_GLOO, kills=True, world_sizes=(3,))
def kill_manual_mode_ddp(ctx):
    # DDP waits for its gradient all_reduce inside loss.backward(), where
    # torch rethrows a backend error as a plain DistBackendError:
    # mooncake.as_fault_error gives the RankFailureError back.
    _mooncake_only(ctx)
    ws, me = ctx.world_size, ctx.rank
    victim = ws - 1
    survivors = [r for r in range(ws) if r != victim]
    mooncake.set_auto_recover(False)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 4))
    for _ in range(2):  # healthy steps; the second rebuilds the buckets
        model(torch.randn(4, 8)).sum().backward()
    ctx.store_barrier("before-kill")
    if me == victim:
        ctx.die()
    loss = model(torch.randn(4, 8)).sum()
    with pytest.raises(dist.DistBackendError) as ei:
        loss.backward()
    err = mooncake.as_fault_error(ei.value)
    assert isinstance(err, mooncake.RankFailureError), \
        f"as_fault_error({type(ei.value).__name__}: {ei.value}) -> {err!r}"
    assert err.failed_ranks == [victim], err.failed_ranks
    assert mooncake.as_fault_error(err) is err
    assert mooncake.as_fault_error(ValueError("mooncake x failed")) is None
    assert mooncake.as_fault_error(dist.DistBackendError("other")) is None
    assert mooncake.recover() == survivors
    t = torch.full((4,), float(me + 1))
    dist.all_reduce(t)
    want = float(sum(r + 1 for r in survivors))
    assert torch.equal(t, torch.full((4,), want)), f"after recover: {t}"


@case(skip_on=NOT_GLOO, kills=True, world_sizes=(4,))
def kill_manual_group_from_env_async(ctx):
    # MOONCAKE_AUTO_RECOVER=0 while a group is created makes that group
    # manual; the default group (created without it) stays in auto mode.
    # The failure interrupts async operations: work.wait() raises.
    _mooncake_only(ctx)
    ws, me = ctx.world_size, ctx.rank
    victim = 1
    survivors = [r for r in range(ws) if r != victim]
    old = os.environ.get("MOONCAKE_AUTO_RECOVER")
    os.environ["MOONCAKE_AUTO_RECOVER"] = "0"
    try:
        g = dist.new_group(list(range(ws)))
    finally:
        if old is None:
            del os.environ["MOONCAKE_AUTO_RECOVER"]
        else:
            os.environ["MOONCAKE_AUTO_RECOVER"] = old
    assert mooncake.get_auto_recover(g) is False
    assert mooncake.get_auto_recover() is True
    _ops_over(ctx, list(range(ws)), "g-before", group=g, async_op=True)
    ctx.store_barrier("before-kill")
    if me == victim:
        ctx.die()
    works = []
    for i in range(4):
        t = torch.full((1 << 16,), float(i))
        works.append(dist.all_reduce(t, group=g, async_op=True))
    _expect_rank_failure("the first interrupted async all_reduce", victim,
                         lambda: works[0].wait())
    for k, w in enumerate(works[1:3], 1):
        _expect_rank_failure(f"async all_reduce {k} (queued behind it)",
                             victim, lambda: w.wait())
    # the Work's future carries the same exception
    _expect_rank_failure("get_future().wait()", victim,
                         lambda: works[3].get_future().wait())
    # the default group is in auto mode: it notices the failure by itself
    _ops_over(ctx, survivors, "world-auto")
    _check_view("default group", 2, survivors, [victim])
    # g is still waiting for recover
    _expect_rank_failure("g before recover", victim,
                         lambda: dist.barrier(group=g))
    assert mooncake.recover(g) == survivors
    _check_view("g after recover", 2, survivors, [victim], group=g)
    digs = [_ops_over(ctx, survivors, "g-after", group=g, async_op=True)]
    _same_on(ctx, survivors, "digests", ",".join(digs))


@pytest.mark.parametrize("ws,name", params(__name__))
def test_case(mp_runner, ws, name):
    mp_runner.check(__name__, ws, name)
