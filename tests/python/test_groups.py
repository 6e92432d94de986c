"""new_group subgroups: ops inside a subgroup while ranks outside do not take
part (they wait on the harness' store, never on the backend), disjoint and
overlapping groups, groups whose ranks are not 0..k-1, singleton groups,
new_subgroups, and interleaving with the default group."""

import pytest
import torch
import torch.distributed as dist

from collective_refs import check, make_input, ref_reduce
from mp_harness import case, params


def _group_ops(ctx, g, members, salt):
    """Run a battery of ops on g (called by members only) and check them."""
    me = ctx.rank
    k = len(members)
    gr = members.index(me)
    assert dist.get_rank(g) == gr, f"get_rank(g)={dist.get_rank(g)}, want {gr}"
    assert dist.get_world_size(g) == k

    ins = [make_input(r, 1001, torch.float32, f"{salt}/ar") for r in members]
    t = ins[gr].clone()
    dist.all_reduce(t, group=g)
    check(t, ref_reduce(ins, "SUM", torch.float32), f"{salt}: all_reduce")

    ins = [make_input(r, 17, torch.int64, f"{salt}/max") for r in members]
    t = ins[gr].clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=g)
    check(t, ref_reduce(ins, "MAX", torch.int64), f"{salt}: all_reduce MAX")

    for src in members:  # src is a global rank
        ref = make_input(src, 33, torch.bfloat16, f"{salt}/bc")
        t = ref.clone() if me == src else torch.zeros(33, dtype=torch.bfloat16)
        dist.broadcast(t, src=src, group=g)
        check(t, ref, f"{salt}: broadcast src={src}")

    ins = [make_input(r, 9, torch.float64, f"{salt}/ag") for r in members]
    out = torch.empty(9 * k, dtype=torch.float64)
    dist.all_gather_into_tensor(out, ins[gr], group=g)
    check(out, torch.cat(ins), f"{salt}: all_gather_into_tensor")

    outs = [torch.empty(9, dtype=torch.float64) for _ in range(k)]
    dist.all_gather(outs, ins[gr], group=g)
    for i in range(k):
        check(outs[i], ins[i], f"{salt}: all_gather slot {i}")

    chunks = [[make_input(r, 5, torch.float32, f"{salt}/rs/{j}")
               for j in range(k)] for r in members]
    out = torch.empty(5)
    dist.reduce_scatter_tensor(out, torch.cat(chunks[gr]), group=g)
    check(out, ref_reduce([chunks[i][gr] for i in range(k)], "SUM",
                          torch.float32), f"{salt}: reduce_scatter_tensor")

    dst = members[-1]
    ins = [make_input(r, 12, torch.int32, f"{salt}/rd") for r in members]
    t = ins[gr].clone()
    dist.reduce(t, dst=dst, group=g)
    if me == dst:
        check(t, ref_reduce(ins, "SUM", torch.int32), f"{salt}: reduce")

    glist = [torch.empty(4) for _ in range(k)] if me == dst else None
    dist.gather(torch.full((4,), float(me)), gather_list=glist, dst=dst,
                group=g)
    if me == dst:
        for i, r in enumerate(members):
            check(glist[i], torch.full((4,), float(r)), f"{salt}: gather {i}")

    src = members[0]
    out = torch.empty(4)
    dist.scatter(out, [torch.full((4,), float(10 * i)) for i in range(k)]
                 if me == src else None, src=src, group=g)
    check(out, torch.full((4,), float(10 * gr)), f"{salt}: scatter")

    inp = torch.cat([make_input(me, 3, torch.float32, f"{salt}/a2a/{j}")
                     for j in members])
    out = torch.empty(3 * k)
    dist.all_to_all_single(out, inp, group=g)
    check(out, torch.cat([make_input(i, 3, torch.float32, f"{salt}/a2a/{me}")
                          for i in members]), f"{salt}: all_to_all_single")

    dist.barrier(group=g)

    if k > 1:  # p2p inside the group, global ranks
        right = members[(gr + 1) % k]
        left = members[(gr - 1) % k]
        rbuf = torch.empty(6)
        rw = dist.irecv(rbuf, src=left, group=g, tag=4)
        sw = dist.isend(make_input(me, 6, torch.float32, f"{salt}/p2p"),
                        dst=right, group=g, tag=4)
        rw.wait()
        sw.wait()
        check(rbuf, make_input(left, 6, torch.float32, f"{salt}/p2p"),
              f"{salt}: p2p in group")

    w = dist.all_reduce(torch.ones(3), group=g, async_op=True)
    w.wait()


def _run_split(ctx, members, salt):
    """Members run the battery on g; outsiders only wait (store) until the
    members are done, proving that the group never needs them."""
    g = dist.new_group(members)
    me = ctx.rank
    if me in members:
        assert g is not None and g != dist.GroupMember.NON_GROUP_MEMBER
        _group_ops(ctx, g, members, salt)
        ctx.store.set(f"{salt}/done/{me}", "1")
    else:
        assert dist.get_rank(g) == -1
        ctx.store.wait([f"{salt}/done/{r}" for r in members])
    ctx.store_barrier(f"{salt}/end")
    return g


@case(world_sizes=(3, 4))
def subgroup_of_first_two(ctx):
    _run_split(ctx, [0, 1], "first2")


@case(world_sizes=(3, 4))
def subgroup_of_last_two(ctx):
    # group ranks differ from global ranks: get_rank, src/dst translation
    ws = ctx.world_size
    _run_split(ctx, [ws - 2, ws - 1], "last2")


@case(world_sizes=(4,))
def subgroup_of_three(ctx):
    _run_split(ctx, [0, 2, 3], "of3")


@case(world_sizes=(4,))
def disjoint_subgroups_concurrently(ctx):
    ga = dist.new_group([0, 1])
    gb = dist.new_group([2, 3])
    if ctx.rank in (0, 1):
        _group_ops(ctx, ga, [0, 1], "ga")
    else:
        _group_ops(ctx, gb, [2, 3], "gb")
    t = torch.full((5,), float(ctx.rank))
    dist.all_reduce(t)
    check(t, torch.full((5,), 6.0), "world all_reduce after subgroups")


@case(world_sizes=(3,))
def overlapping_subgroups(ctx):
    ga = dist.new_group([0, 1])
    gb = dist.new_group([1, 2])
    me = ctx.rank
    # rank 1 is in both; the order of its calls differs from the others'
    # program order, which a backend must tolerate (separate communicators).
    if me == 0:
        _group_ops(ctx, ga, [0, 1], "ova")
    elif me == 2:
        _group_ops(ctx, gb, [1, 2], "ovb")
    else:
        _group_ops(ctx, ga, [0, 1], "ova")
        _group_ops(ctx, gb, [1, 2], "ovb")


@case(world_sizes=(2, 3, 4))
def singleton_groups(ctx):
    ws, me = ctx.world_size, ctx.rank
    groups = [dist.new_group([r]) for r in range(ws)]
    g = groups[me]
    _group_ops(ctx, g, [me], f"single{me}")


@case(world_sizes=(2, 3, 4))
def full_group_interleaved_with_world(ctx):
    ws, me = ctx.world_size, ctx.rank
    g = dist.new_group(list(range(ws)))
    for i in range(5):
        a = torch.full((7,), float(me + i))
        b = torch.full((7,), float(2 * me))
        wa = dist.all_reduce(a, async_op=True)
        wb = dist.all_reduce(b, group=g, async_op=True)
        wb.wait()
        wa.wait()
        check(a, torch.full((7,), float(ws * (ws - 1) // 2 + ws * i)),
              f"world all_reduce {i}")
        check(b, torch.full((7,), float(ws * (ws - 1))), f"group all_reduce "
              f"{i}")


@case(world_sizes=(4,))
def new_subgroups_pairs(ctx):
    cur, subgroups = dist.new_subgroups(group_size=2)
    assert len(subgroups) == 2
    members = [0, 1] if ctx.rank < 2 else [2, 3]
    t = torch.full((4,), float(ctx.rank))
    dist.all_reduce(t, group=cur)
    check(t, torch.full((4,), float(sum(members))), "new_subgroups all_reduce")
    out = torch.empty(2 * 4)
    dist.all_gather_into_tensor(out, torch.full((4,), float(ctx.rank)),
                                group=cur)
    check(out, torch.cat([torch.full((4,), float(r)) for r in members]),
          "new_subgroups all_gather")


@case(world_sizes=(3, 4))
def many_groups(ctx):
    ws, me = ctx.world_size, ctx.rank
    specs = [[0, 1], [1, 2], [0, 2], list(range(ws)), [ws - 1]]
    groups = [dist.new_group(s) for s in specs]
    for rep in range(2):
        for s, g in zip(specs, groups):
            if me not in s:
                continue
            t = torch.full((3,), float(me + rep))
            dist.all_reduce(t, group=g)
            check(t, torch.full((3,), float(sum(s) + rep * len(s))),
                  f"group {s} rep {rep}")
    ctx.store_barrier("many")


@pytest.mark.parametrize("ws,name", params(__name__))
def test_case(mp_runner, ws, name):
    mp_runner.check(__name__, ws, name)
