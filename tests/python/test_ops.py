"""Collectives over torch.distributed: every op, dtypes, sizes, all roots.

Each case runs on every rank of a pool (world sizes 2, 3, 4) and checks the
rank's own output against a reference built locally from every rank's
deterministic input (collective_refs).
"""

import pytest
import torch
import torch.distributed as dist

from collective_refs import (ALL_DTYPES, OPS, check, dtype_name,
                             input_kind, make_input, redop, ref_reduce,
                             valid_op)
from mp_harness import case, params

SMALL_SHAPES = ((0,), (1,), (1001,), (7, 13))
BIG = (1 << 20) + 3  # ~1M elements, odd
GLOO_NO_AVG = {"gloo": "gloo has no ReduceOp.AVG"}

# (op, dtype) pairs that also run at ~1M elements
BIG_COMBOS = {("SUM", torch.float32), ("SUM", torch.bfloat16),
              ("MAX", torch.float16), ("MAX", torch.int64),
              ("BXOR", torch.uint8), ("BOR", torch.bool),
              ("AVG", torch.float64), ("PRODUCT", torch.int32)}

MOVE_DTYPES = ALL_DTYPES


# ---------------------------------------------------------------------------
# all_reduce: every valid (op, dtype)
# ---------------------------------------------------------------------------


def _make_all_reduce_case(op, dtype):
    def fn(ctx):
        shapes = SMALL_SHAPES + (((BIG,),) if (op, dtype) in BIG_COMBOS
                                 else ())
        for shape in shapes:
            salt = f"ar/{op}/{dtype}/{shape}"
            kind = input_kind(op)
            inputs = [make_input(r, shape, dtype, salt, kind)
                      for r in range(ctx.world_size)]
            t = inputs[ctx.rank].clone()
            ret = dist.all_reduce(t, op=redop(op))
            assert ret is None, f"sync all_reduce returned {ret!r}"
            check(t, ref_reduce(inputs, op, dtype),
                  f"all_reduce {op} {dtype_name(dtype)} shape {shape}", op)

    fn.__name__ = f"all_reduce_{op}_{dtype_name(dtype)}"
    fn.__qualname__ = fn.__name__
    return case(fn, skip_on=GLOO_NO_AVG if op == "AVG" else None)


for _op in OPS:
    for _dt in ALL_DTYPES:
        if valid_op(_op, _dt):
            _make_all_reduce_case(_op, _dt)


@case
def all_reduce_inplace_views(ctx):
    # A contiguous slice of a bigger tensor: only the slice changes.
    base = make_input(ctx.rank, 100, torch.float32, "views")
    orig = base.clone()
    view = base[10:60]
    dist.all_reduce(view)
    inputs = [make_input(r, 100, torch.float32, "views")[10:60]
              for r in range(ctx.world_size)]
    check(view, ref_reduce(inputs, "SUM", torch.float32), "slice result")
    check(base[:10], orig[:10], "bytes before the slice")
    check(base[60:], orig[60:], "bytes after the slice")


@case
def all_reduce_coalesced(ctx):
    for dtype, op in ((torch.float32, "SUM"), (torch.int64, "MAX"),
                      (torch.float64, "MIN")):
        shapes = ((0,), (1,), (1001,), (17, 3))
        ins = [[make_input(r, s, dtype, f"arc/{dtype}/{i}")
                for i, s in enumerate(shapes)] for r in range(ctx.world_size)]
        mine = [t.clone() for t in ins[ctx.rank]]
        dist.all_reduce_coalesced(mine, op=redop(op))
        for i in range(len(shapes)):
            check(mine[i], ref_reduce([ins[r][i] for r in
                                       range(ctx.world_size)], op, dtype),
                  f"all_reduce_coalesced {op} {dtype_name(dtype)} tensor {i}")


def _sparse_input(rank, ws, dtype, dense_dim):
    """Rank `rank`'s COO tensor of shape (9, 5[, 3]): entries that every
    rank has, ones only it has, a duplicate index (summed by coalescing),
    and none at all on the last rank of 3 or more."""
    if ws >= 3 and rank == ws - 1:
        idx = torch.zeros((2, 0), dtype=torch.int64)
    else:
        idx = torch.tensor([[0, 8, rank, (rank + 3) % 9, 0],
                            [0, 4, rank % 5, 2, 0]])
    n = idx.shape[1]
    shape = (n, 3) if dense_dim else (n,)
    val = (torch.arange(n * (3 if dense_dim else 1)).reshape(shape) +
           10 * rank + 1).to(dtype)
    size = (9, 5, 3) if dense_dim else (9, 5)
    return torch.sparse_coo_tensor(idx, val, size)


@case
def all_reduce_sparse(ctx):
    for dtype in (torch.float32, torch.float64, torch.int64):
        for dense_dim in (0, 1):
            ins = [_sparse_input(r, ctx.world_size, dtype, dense_dim)
                   for r in range(ctx.world_size)]
            t = ins[ctx.rank].clone()
            dist.all_reduce(t)
            assert t.is_sparse, "the result is no longer sparse"
            assert (t.sparse_dim(), t.dense_dim()) == (2, dense_dim)
            want = sum(x.to_dense() for x in ins)
            check(t.to_dense(), want,
                  f"sparse all_reduce {dtype_name(dtype)} dense_dim "
                  f"{dense_dim}")
    # no entries on any rank, a dense dim: the layout stays
    e = torch.sparse_coo_tensor(torch.zeros((1, 0), dtype=torch.int64),
                                torch.zeros((0, 3)), (9, 3))
    dist.all_reduce(e)
    assert (e.sparse_dim(), e.dense_dim(), e._nnz()) == (1, 1, 0), \
        (e.sparse_dim(), e.dense_dim(), e._nnz())
    check(e.to_dense(), torch.zeros(9, 3), "all-empty sparse all_reduce")


@case(skip_on={"gloo": "the messages are mooncake's"})
def all_reduce_sparse_bad(ctx):
    t = _sparse_input(ctx.rank, ctx.world_size, torch.float32, 0)
    with pytest.raises(RuntimeError, match="supports ReduceOp.SUM only"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    # sizes that differ: every rank gets the error (all see every size)
    bad = torch.sparse_coo_tensor(t._indices(), t._values(),
                                  (9 + (ctx.rank == 1), 5))
    with pytest.raises(RuntimeError, match="sparse tensor sizes differ"):
        dist.all_reduce(bad)
    # the group still works
    x = torch.ones(4)
    dist.all_reduce(x)
    check(x, torch.full((4,), float(ctx.world_size)), "dense after")


# ---------------------------------------------------------------------------
# all_gather / all_gather_into_tensor
# ---------------------------------------------------------------------------


@case
def all_gather_list(ctx):
    ws = ctx.world_size
    for dtype in MOVE_DTYPES:
        for shape in SMALL_SHAPES:
            ins = [make_input(r, shape, dtype, f"ag/{dtype}/{shape}")
                   for r in range(ws)]
            outs = [torch.full(shape, 7, dtype=dtype) for _ in range(ws)]
            dist.all_gather(outs, ins[ctx.rank])
            for r in range(ws):
                check(outs[r], ins[r],
                      f"all_gather {dtype_name(dtype)} {shape} slot {r}")
    ins = [make_input(r, BIG, torch.float32, "agbig") for r in range(ws)]
    outs = [torch.empty(BIG) for _ in range(ws)]
    dist.all_gather(outs, ins[ctx.rank])
    for r in range(ws):
        check(outs[r], ins[r], f"all_gather ~1M float32 slot {r}")


@case(skip_on={"gloo": "gloo's allgather requires equal sizes"})
def all_gather_list_uneven(ctx):
    ws = ctx.world_size
    for base in (0, 1, 5):
        sizes = [base + 3 * r for r in range(ws)]  # rank 0 may send 0
        ins = [make_input(r, sizes[r], torch.float32, f"agu/{base}")
               for r in range(ws)]
        outs = [torch.full((sizes[r],), -1.0) for r in range(ws)]
        dist.all_gather(outs, ins[ctx.rank])
        for r in range(ws):
            check(outs[r], ins[r], f"uneven all_gather sizes {sizes} slot {r}")


@case
def all_gather_into_tensor(ctx):
    ws = ctx.world_size
    for dtype in MOVE_DTYPES:
        for n in (0, 1, 1001):
            ins = [make_input(r, n, dtype, f"agt/{dtype}/{n}")
                   for r in range(ws)]
            flat = torch.full((ws * n,), 3, dtype=dtype)
            dist.all_gather_into_tensor(flat, ins[ctx.rank])
            check(flat, torch.cat(ins), f"all_gather_into_tensor concat "
                  f"{dtype_name(dtype)} n={n}")
    ins = [make_input(r, BIG, torch.bfloat16, "agtbig") for r in range(ws)]
    out = torch.empty(ws * BIG, dtype=torch.bfloat16)
    dist.all_gather_into_tensor(out, ins[ctx.rank])
    check(out, torch.cat(ins), "all_gather_into_tensor ~1M bfloat16")


@case(skip_on={"gloo": "gloo accepts only the concatenated output form"})
def all_gather_into_tensor_stacked(ctx):
    ws = ctx.world_size
    for dtype in (torch.float32, torch.int8, torch.bool):
        for n in (0, 1, 1001):
            ins = [make_input(r, n, dtype, f"agts/{dtype}/{n}")
                   for r in range(ws)]
            stacked = torch.full((ws, n), 3, dtype=dtype)
            dist.all_gather_into_tensor(stacked, ins[ctx.rank])
            check(stacked, torch.stack(ins), f"all_gather_into_tensor stack "
                  f"{dtype_name(dtype)} n={n}")
    # (ws, 2, 3) output from (2, 3) inputs
    ins = [make_input(r, (2, 3), torch.float64, "agts3") for r in range(ws)]
    out = torch.empty(ws, 2, 3, dtype=torch.float64)
    dist.all_gather_into_tensor(out, ins[ctx.rank])
    check(out, torch.stack(ins), "all_gather_into_tensor stack of 2-D")


# ---------------------------------------------------------------------------
# reduce_scatter / reduce_scatter_tensor
# ---------------------------------------------------------------------------

RS_COMBOS = ((torch.float32, "SUM"), (torch.float16, "SUM"),
             (torch.bfloat16, "MAX"), (torch.float64, "MIN"),
             (torch.int64, "PRODUCT"), (torch.int32, "BXOR"),
             (torch.uint8, "SUM"), (torch.int8, "MIN"), (torch.bool, "BOR"))


def _rs_inputs(ws, n, dtype, op, salt):
    # ins[r][j] = rank r's contribution to rank j's output
    return [[make_input(r, n, dtype, f"{salt}/{j}", input_kind(op))
             for j in range(ws)] for r in range(ws)]


@case
def reduce_scatter_list(ctx):
    ws, me = ctx.world_size, ctx.rank
    for dtype, op in RS_COMBOS:
        for n in (0, 1, 1001):
            ins = _rs_inputs(ws, n, dtype, op, f"rs/{dtype}/{op}/{n}")
            out = torch.full((n,), 1, dtype=dtype)
            dist.reduce_scatter(out, [t.clone() for t in ins[me]],
                                op=redop(op))
            check(out, ref_reduce([ins[r][me] for r in range(ws)], op, dtype),
                  f"reduce_scatter {op} {dtype_name(dtype)} n={n}")


@case
def reduce_scatter_tensor(ctx):
    ws, me = ctx.world_size, ctx.rank
    for dtype, op in RS_COMBOS:
        for n in (0, 1, 1001):
            ins = _rs_inputs(ws, n, dtype, op, f"rst/{dtype}/{op}/{n}")
            flat = torch.cat(ins[me])
            out = torch.full((n,), 1, dtype=dtype)
            dist.reduce_scatter_tensor(out, flat, op=redop(op))
            ref = ref_reduce([ins[r][me] for r in range(ws)], op, dtype)
            check(out, ref, f"reduce_scatter_tensor {op} "
                  f"{dtype_name(dtype)} n={n}")
            check(flat, torch.cat(ins[me]), "reduce_scatter_tensor input "
                  "must not change")
    ins = _rs_inputs(ws, BIG // 4, torch.float32, "SUM", "rstbig")
    out = torch.empty(BIG // 4)
    dist.reduce_scatter_tensor(out, torch.cat(ins[me]))
    check(out, ref_reduce([ins[r][me] for r in range(ws)], "SUM",
                          torch.float32), "reduce_scatter_tensor big")


@case(skip_on={"gloo": "gloo accepts only the concatenated input form"})
def reduce_scatter_tensor_stacked(ctx):
    ws, me = ctx.world_size, ctx.rank
    for dtype, op in RS_COMBOS[:4]:
        for n in (0, 1, 1001):
            ins = _rs_inputs(ws, n, dtype, op, f"rsts/{dtype}/{op}/{n}")
            out = torch.full((n,), 1, dtype=dtype)
            dist.reduce_scatter_tensor(out, torch.stack(ins[me]),
                                       op=redop(op))
            check(out, ref_reduce([ins[r][me] for r in range(ws)], op, dtype),
                  f"reduce_scatter_tensor (ws, n) input {op} "
                  f"{dtype_name(dtype)} n={n}")


@case(skip_on=GLOO_NO_AVG)
def all_reduce_avg_fp16_range(ctx):
    """fp16 AVG whose sum leaves fp16's range (4 ranks of 20000: 80000 >
    65504): each rank divides first (as NCCL), so the average stays finite;
    summed first it was inf."""
    t = torch.full((1001,), 20000.0, dtype=torch.float16)
    dist.all_reduce(t, op=redop("AVG"))
    assert torch.isfinite(t).all(), f"fp16 AVG overflowed: {t[:4]}"
    torch.testing.assert_close(t, torch.full_like(t, 20000.0), rtol=2e-3,
                               atol=0)


@case(skip_on=GLOO_NO_AVG)
def reduce_scatter_avg(ctx):
    ws, me = ctx.world_size, ctx.rank
    for dtype in (torch.float32, torch.bfloat16, torch.int64):
        ins = _rs_inputs(ws, 33, dtype, "AVG", f"rsavg/{dtype}")
        out = torch.empty(33, dtype=dtype)
        dist.reduce_scatter_tensor(out, torch.cat(ins[me]), op=redop("AVG"))
        check(out, ref_reduce([ins[r][me] for r in range(ws)], "AVG", dtype),
              f"reduce_scatter_tensor AVG {dtype_name(dtype)}", "AVG")


# ---------------------------------------------------------------------------
# broadcast / reduce / gather / scatter with every root
# ---------------------------------------------------------------------------


@case
def broadcast_every_root(ctx):
    ws = ctx.world_size
    for src in range(ws):
        for dtype in MOVE_DTYPES:
            for shape in SMALL_SHAPES:
                ref = make_input(src, shape, dtype, f"bc/{dtype}/{shape}")
                t = (ref.clone() if ctx.rank == src else
                     torch.full(shape, 5, dtype=dtype))
                dist.broadcast(t, src=src)
                check(t, ref, f"broadcast src={src} {dtype_name(dtype)} "
                      f"{shape}")
        ref = make_input(src, BIG, torch.float32, "bcbig")
        t = ref.clone() if ctx.rank == src else torch.empty(BIG)
        dist.broadcast(t, src=src)
        check(t, ref, f"broadcast src={src} ~1M float32")


@case
def reduce_every_root(ctx):
    ws = ctx.world_size
    for dst in range(ws):
        for dtype, op in ((torch.float32, "SUM"), (torch.int64, "MAX"),
                          (torch.bfloat16, "MIN"), (torch.int8, "PRODUCT"),
                          (torch.uint8, "BAND"), (torch.bool, "BOR")):
            for shape in ((0,), (1,), (1001,)):
                ins = [make_input(r, shape, dtype, f"rd/{dtype}/{shape}",
                                  input_kind(op)) for r in range(ws)]
                t = ins[ctx.rank].clone()
                dist.reduce(t, dst=dst, op=redop(op))
                if ctx.rank == dst:
                    check(t, ref_reduce(ins, op, dtype),
                          f"reduce dst={dst} {op} {dtype_name(dtype)} "
                          f"{shape}")


@case
def gather_every_root(ctx):
    ws = ctx.world_size
    for dst in range(ws):
        for dtype in (torch.float32, torch.int64, torch.float16, torch.bool,
                      torch.uint8):
            for shape in SMALL_SHAPES:
                ins = [make_input(r, shape, dtype, f"ga/{dtype}/{shape}")
                       for r in range(ws)]
                glist = ([torch.full(shape, 9, dtype=dtype)
                          for _ in range(ws)] if ctx.rank == dst else None)
                dist.gather(ins[ctx.rank].clone(), gather_list=glist, dst=dst)
                if ctx.rank == dst:
                    for r in range(ws):
                        check(glist[r], ins[r], f"gather dst={dst} "
                              f"{dtype_name(dtype)} {shape} slot {r}")


@case
def scatter_every_root(ctx):
    ws = ctx.world_size
    for src in range(ws):
        for dtype in (torch.float32, torch.int64, torch.bfloat16, torch.bool,
                      torch.int8):
            for shape in SMALL_SHAPES:
                chunks = [make_input(j, shape, dtype,
                                     f"sc/{src}/{dtype}/{shape}")
                          for j in range(ws)]
                out = torch.full(shape, 4, dtype=dtype)
                dist.scatter(out, scatter_list=([c.clone() for c in chunks]
                                                if ctx.rank == src else None),
                             src=src)
                check(out, chunks[ctx.rank], f"scatter src={src} "
                      f"{dtype_name(dtype)} {shape}")


# ---------------------------------------------------------------------------
# all_to_all (list) / all_to_all_single
# ---------------------------------------------------------------------------


def _split(i, j, mode):
    """Elements rank i sends to rank j."""
    if mode == "even":
        return 6
    if mode == "uneven":
        return 1 + (3 * i + j) % 5
    if mode == "zeros":  # many zero splits, incl. whole rows/columns
        return 0 if (i + j) % 2 == 0 or i == 1 else 2 + i + j
    if mode == "allzero":
        return 0
    raise ValueError(mode)


def _seg(i, j, n, dtype, salt):
    return make_input(i, n, dtype, f"{salt}/{j}")


@case(skip_on={"gloo": "gloo does not implement all_to_all with lists"})
def all_to_all_list(ctx):
    ws, me = ctx.world_size, ctx.rank
    for mode in ("even", "uneven", "zeros"):
        for dtype in (torch.float32, torch.int64, torch.float16, torch.bool):
            salt = f"a2a/{mode}/{dtype}"
            ins = [_seg(me, j, _split(me, j, mode), dtype, salt)
                   for j in range(ws)]
            outs = [torch.full((_split(i, me, mode),), 3, dtype=dtype)
                    for i in range(ws)]
            dist.all_to_all(outs, ins)
            for i in range(ws):
                check(outs[i], _seg(i, me, _split(i, me, mode), dtype, salt),
                      f"all_to_all {mode} {dtype_name(dtype)} from rank {i}")


@case
def all_to_all_single_even(ctx):
    ws, me = ctx.world_size, ctx.rank
    for dtype in MOVE_DTYPES:
        for n in (0, 1, 7):
            salt = f"a2as/{dtype}/{n}"
            inp = torch.cat([_seg(me, j, n, dtype, salt) for j in range(ws)])
            out = torch.full((ws * n,), 2, dtype=dtype)
            dist.all_to_all_single(out, inp)
            ref = torch.cat([_seg(i, me, n, dtype, salt) for i in range(ws)])
            check(out, ref, f"all_to_all_single even {dtype_name(dtype)} "
                  f"n={n}")
    # 2-D: rows are split, each rank gets one block of rows from everyone
    salt = "a2as2d"
    inp = torch.cat([_seg(me, j, 3 * 5, torch.float32, salt).view(3, 5)
                     for j in range(ws)])
    out = torch.empty(ws * 3, 5)
    dist.all_to_all_single(out, inp)
    ref = torch.cat([_seg(i, me, 15, torch.float32, salt).view(3, 5)
                     for i in range(ws)])
    check(out, ref, "all_to_all_single 2-D even")
    n = (1 << 18) + 1
    inp = torch.cat([_seg(me, j, n, torch.float32, "a2asbig")
                     for j in range(ws)])
    out = torch.empty(ws * n)
    dist.all_to_all_single(out, inp)
    check(out, torch.cat([_seg(i, me, n, torch.float32, "a2asbig")
                          for i in range(ws)]), "all_to_all_single big")


@case
def all_to_all_single_uneven(ctx):
    ws, me = ctx.world_size, ctx.rank
    for mode in ("uneven", "zeros", "allzero"):
        for dtype in (torch.float32, torch.int32, torch.bfloat16, torch.uint8):
            salt = f"a2asu/{mode}/{dtype}"
            in_splits = [_split(me, j, mode) for j in range(ws)]
            out_splits = [_split(i, me, mode) for i in range(ws)]
            inp = torch.cat([_seg(me, j, in_splits[j], dtype, salt)
                             for j in range(ws)])
            out = torch.full((sum(out_splits),), 1, dtype=dtype)
            dist.all_to_all_single(out, inp, output_split_sizes=out_splits,
                                   input_split_sizes=in_splits)
            ref = torch.cat([_seg(i, me, out_splits[i], dtype, salt)
                             for i in range(ws)])
            check(out, ref, f"all_to_all_single {mode} {dtype_name(dtype)} "
                  f"in_splits={in_splits} out_splits={out_splits}")
    # 2-D rows with uneven row splits
    in_splits = [_split(me, j, "uneven") for j in range(ws)]
    out_splits = [_split(i, me, "uneven") for i in range(ws)]
    inp = torch.cat([_seg(me, j, 4 * in_splits[j], torch.float64,
                          "a2a2du").view(-1, 4) for j in range(ws)])
    out = torch.empty(sum(out_splits), 4, dtype=torch.float64)
    dist.all_to_all_single(out, inp, out_splits, in_splits)
    ref = torch.cat([_seg(i, me, 4 * out_splits[i], torch.float64,
                          "a2a2du").view(-1, 4) for i in range(ws)])
    check(out, ref, "all_to_all_single 2-D uneven rows")


# ---------------------------------------------------------------------------
# barrier
# ---------------------------------------------------------------------------


@case
def barrier_synchronises(ctx):
    import time

    for round_ in range(3):
        late = round_ % ctx.world_size
        if ctx.rank == late:
            time.sleep(0.3)
        # Published through the store right before entering the barrier: a
        # rank leaving the barrier must see every rank's key.
        ctx.store.set(f"arrived/{round_}/{ctx.rank}", "1")
        t0 = time.monotonic()
        dist.barrier()
        waited = time.monotonic() - t0
        missing = [r for r in range(ctx.world_size)
                   if not ctx.store.check([f"arrived/{round_}/{r}"])]
        assert not missing, (f"round {round_}: left the barrier before rank(s) "
                             f"{missing} entered it")
        if ctx.rank != late:
            assert waited > 0.1, (f"round {round_}: barrier returned after "
                                  f"{waited:.3f}s although rank {late} "
                                  f"arrived 0.3s late")
    for _ in range(20):
        dist.barrier()


@pytest.mark.parametrize("ws,name", params(__name__))
def test_case(mp_runner, ws, name):
    mp_runner.check(__name__, ws, name)
