"""Point-to-point: send/recv/isend/irecv with tags, recv from any source,
batch_isend_irecv.  Payloads are deterministic functions of (sender,
receiver, tag), so every receiver knows what it must get."""

import time

import pytest
import torch
import torch.distributed as dist

from collective_refs import check, dtype_name, make_input
from mp_harness import case, params

P2P_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16,
              torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool)


def payload(src, dst, tag, n, dtype=torch.float32):
    return make_input(src, n, dtype, f"p2p/{dst}/{tag}")


@case
def send_recv_all_pairs(ctx):
    ws, me = ctx.world_size, ctx.rank
    for dtype in P2P_DTYPES:
        for n in (0, 1, 1001):
            for src in range(ws):
                for dst in range(ws):
                    if src == dst:
                        continue
                    if me == src:
                        dist.send(payload(src, dst, 0, n, dtype), dst=dst)
                    elif me == dst:
                        t = torch.full((n,), 3, dtype=dtype)
                        dist.recv(t, src=src)
                        check(t, payload(src, dst, 0, n, dtype),
                              f"recv {dtype_name(dtype)} n={n} {src}->{dst}")


@case
def tags_select_messages(ctx):
    # Each rank sends tags 3, 7, 11 to its right neighbour and receives them
    # from its left neighbour in a different order: tags, not arrival order,
    # decide which receive gets which message.
    ws, me = ctx.world_size, ctx.rank
    right, left = (me + 1) % ws, (me - 1) % ws
    sizes = {3: 5, 7: 1001, 11: 0}
    sends = [dist.isend(payload(me, right, tag, sizes[tag]), dst=right,
                        tag=tag) for tag in (3, 7, 11)]
    for tag in (11, 7, 3):
        t = torch.empty(sizes[tag])
        dist.recv(t, src=left, tag=tag)
        check(t, payload(left, me, tag, sizes[tag]), f"tag {tag} from {left}")
    for w in sends:
        w.wait()


@case
def same_tag_keeps_order(ctx):
    ws, me = ctx.world_size, ctx.rank
    right, left = (me + 1) % ws, (me - 1) % ws
    sends = [dist.isend(payload(me, right, 100 + k, 64), dst=right, tag=9)
             for k in range(4)]
    bufs = [torch.empty(64) for _ in range(4)]
    recvs = [dist.irecv(b, src=left, tag=9) for b in bufs]
    for w in recvs + sends:
        w.wait()
    for k in range(4):
        check(bufs[k], payload(left, me, 100 + k, 64),
              f"message {k} with tag 9 out of order")


@case
def isend_irecv_many_in_flight(ctx):
    ws, me = ctx.world_size, ctx.rank
    sizes = (0, 1, 33, 1 << 17)
    reqs, expect = [], []
    for peer in range(ws):
        if peer == me:
            continue
        for k, n in enumerate(sizes):
            buf = torch.full((n,), -1.0)
            reqs.append(dist.irecv(buf, src=peer, tag=k))
            expect.append((buf, payload(peer, me, k, n), f"from {peer} tag {k}"))
    for peer in range(ws):
        if peer == me:
            continue
        for k, n in enumerate(sizes):
            reqs.append(dist.isend(payload(me, peer, k, n), dst=peer, tag=k))
    for w in reversed(reqs):
        assert w.wait() is True
    for buf, ref, what in expect:
        check(buf, ref, what)


@case
def recv_any_source(ctx):
    ws, me = ctx.world_size, ctx.rank
    for root in range(ws):
        if me == root:
            seen = []
            for _ in range(ws - 1):
                t = torch.empty(16)
                src = dist.recv(t, tag=5)  # src=None: any source
                assert isinstance(src, int) and 0 <= src < ws and \
                    src != root, f"recv(src=None) returned {src!r}"
                check(t, payload(src, root, 5, 16),
                      f"any-source payload claimed from rank {src}")
                seen.append(src)
            assert sorted(seen) == [r for r in range(ws) if r != root], \
                f"any-source receives reported senders {seen}"
        else:
            dist.send(payload(me, root, 5, 16), dst=root, tag=5)


@case
def irecv_any_source(ctx):
    ws, me = ctx.world_size, ctx.rank
    if me == 0:
        bufs = [torch.full((8,), -1.0) for _ in range(ws - 1)]
        works = [dist.irecv(b, tag=6) for b in bufs]
        for w in works:
            w.wait()
        # the payload's first element encodes the sender
        got = sorted(int(b[0]) for b in bufs)
        assert got == list(range(1, ws)), f"senders seen: {got}"
        for b in bufs:
            check(b, torch.full((8,), b[0].item()), "any-source irecv payload")
    else:
        dist.send(torch.full((8,), float(me)), dst=0, tag=6)


@case
def batch_isend_irecv_ring(ctx):
    ws, me = ctx.world_size, ctx.rank
    right, left = (me + 1) % ws, (me - 1) % ws
    for n in (0, 1, 1001):
        from_left, from_right = torch.empty(n), torch.empty(n)
        ops = [dist.P2POp(dist.isend, payload(me, right, 1, n), right, tag=1),
               dist.P2POp(dist.irecv, from_left, left, tag=1),
               dist.P2POp(dist.isend, payload(me, left, 2, n), left, tag=2),
               dist.P2POp(dist.irecv, from_right, right, tag=2)]
        for w in dist.batch_isend_irecv(ops):
            w.wait()
        check(from_left, payload(left, me, 1, n), f"ring from left n={n}")
        check(from_right, payload(right, me, 2, n), f"ring from right n={n}")


@case
def batch_isend_irecv_all_pairs(ctx):
    ws, me = ctx.world_size, ctx.rank
    ops, expect = [], []
    for peer in range(ws):
        if peer == me:
            continue
        buf = torch.empty(100, dtype=torch.int64)
        ops.append(dist.P2POp(dist.irecv, buf, peer))
        expect.append((buf, payload(peer, me, 0, 100, torch.int64), peer))
        ops.append(dist.P2POp(dist.isend,
                              payload(me, peer, 0, 100, torch.int64), peer))
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    for buf, ref, peer in expect:
        check(buf, ref, f"batch all-pairs from {peer}")


@case
def p2p_interleaved_with_collectives(ctx):
    # p2p traffic in flight while collectives run must not disturb either.
    ws, me = ctx.world_size, ctx.rank
    right, left = (me + 1) % ws, (me - 1) % ws
    rbuf = torch.empty(257)
    rw = dist.irecv(rbuf, src=left, tag=42)
    t = torch.full((10,), float(me + 1))
    dist.all_reduce(t)
    check(t, torch.full((10,), float(ws * (ws + 1) // 2)), "all_reduce")
    sw = dist.isend(payload(me, right, 42, 257), dst=right, tag=42)
    dist.barrier()
    rw.wait()
    sw.wait()
    check(rbuf, payload(left, me, 42, 257), "p2p across collectives")


def _ring_16mib(ctx, tag):
    """irecv from the left, isend to the right, 16 MiB each: (receive
    buffer, its Work, the send's Work, what the receive must get)."""
    ws, me = ctx.world_size, ctx.rank
    right, left = (me + 1) % ws, (me - 1) % ws
    n = 4 << 20
    got = torch.zeros(n)
    rw = dist.irecv(got, src=left, tag=tag)
    sw = dist.isend(payload(me, right, tag, n), dst=right, tag=tag)
    return got, rw, sw, payload(left, me, tag, n)


@case
def futures_only(ctx):
    # Waiting on the futures alone (work.get_future().wait(), or a callback
    # chained to them) never calls into the Work: the backend must move the
    # messages itself. 16 MiB each way around the ring is far more than the
    # rings and socket buffers hold; before, this waited for good.
    me = ctx.rank
    got, rw, sw, want = _ring_16mib(ctx, 5)
    seen = []
    chained = rw.get_future().then(lambda f: seen.append(me) or 1)
    sw.get_future().wait()
    rw.get_future().wait()
    assert chained.wait() == 1 and seen == [me]
    check(got, want, "irecv waited through its future")


@case
def moves_before_wait(ctx):
    # isend/irecv move in the background, as gloo's and NCCL's do: 16 MiB
    # each way around the ring is in the receive buffer before anyone waits
    # (no call at all meanwhile), so a transfer overlaps the caller's own
    # work. Before, a Work without a future moved only inside its wait.
    got, rw, sw, want = _ring_16mib(ctx, 6)
    deadline = time.monotonic() + ctx.op_timeout
    while not (got[0] == want[0] and got[-1] == want[-1]):
        assert time.monotonic() < deadline, \
            "16 MiB not received before its wait: no background progress"
        time.sleep(0.002)
    sw.wait()
    rw.wait()
    check(got, want, "irecv that moved before its wait")


@pytest.mark.parametrize("ws,name", params(__name__))
def test_case(mp_runner, ws, name):
    mp_runner.check(__name__, ws, name)
