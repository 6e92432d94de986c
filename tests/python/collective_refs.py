"""Deterministic per-rank inputs and local references for collective tests.

Every worker can build every rank's input (seeded by rank and a salt), so
each rank checks its own output against a reference computed with plain torch
ops on the concatenated inputs, without trusting the backend under test.

Float inputs are multiples of 1/4 in [-4, 4]: sums of up to 4 ranks stay
exactly representable in float16 and bfloat16, so SUM/MIN/MAX results are
exact whatever order the backend reduces in.  PRODUCT inputs come from
{-2..2} (unsigned: {0..3}) so products of 4 ranks do not overflow int8.
"""

import functools
import zlib

import torch
import torch.distributed as dist

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INT_DTYPES = (torch.int32, torch.int64, torch.int8, torch.uint8)
ALL_DTYPES = FLOAT_DTYPES + INT_DTYPES + (torch.bool,)

OPS = ("SUM", "PRODUCT", "MIN", "MAX", "AVG", "BAND", "BOR", "BXOR")


def dtype_name(dt):
    return str(dt).replace("torch.", "")


def valid_op(op, dtype):
    """Reductions torch defines for a dtype (the rest are 'unsupported')."""
    if op in ("BAND", "BOR", "BXOR"):
        return dtype not in FLOAT_DTYPES
    if op == "AVG":
        return dtype != torch.bool
    return True


def redop(op):
    return getattr(dist.ReduceOp, op)


def _seed(rank, salt):
    if isinstance(salt, str):
        salt = zlib.crc32(salt.encode())
    return (salt * 1000003 + rank * 7919 + 17) & 0x7FFFFFFFFFFF


def make_input(rank, shape, dtype, salt=0, kind="sum"):
    """Deterministic tensor for `rank`; kind 'prod' = small factors,
    'bits' = full-range integers (for bitwise ops)."""
    if isinstance(shape, int):
        shape = (shape,)
    g = torch.Generator().manual_seed(_seed(rank, salt))
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if kind == "prod":
        if dtype == torch.uint8:
            return torch.randint(0, 4, shape, generator=g).to(dtype)
        return torch.randint(-2, 3, shape, generator=g).to(dtype)
    if kind == "bits" and dtype in INT_DTYPES:
        info = torch.iinfo(dtype)
        lo, hi = max(info.min, -(2**62)), min(info.max, 2**62)
        return torch.randint(lo, hi, shape, generator=g, dtype=torch.int64
                             ).to(dtype)
    if dtype in FLOAT_DTYPES:
        return (torch.randint(-16, 17, shape, generator=g).double() / 4
                ).to(dtype)
    if dtype == torch.uint8:
        return torch.randint(0, 50, shape, generator=g).to(dtype)
    return torch.randint(-20, 21, shape, generator=g).to(dtype)


def input_kind(op):
    return {"PRODUCT": "prod", "BAND": "bits", "BOR": "bits",
            "BXOR": "bits"}.get(op, "sum")


def ref_reduce(inputs, op, dtype):
    """Reduce a list of same-shape tensors as a backend should."""
    n = len(inputs)
    if dtype == torch.bool:
        st = torch.stack(inputs)
        if op in ("SUM", "MAX", "BOR"):
            return st.any(0)
        if op in ("PRODUCT", "MIN", "BAND"):
            return st.all(0)
        if op == "BXOR":
            return functools.reduce(torch.logical_xor, inputs)
        raise ValueError(op)
    if op in ("BAND", "BOR", "BXOR"):
        f = {"BAND": torch.bitwise_and, "BOR": torch.bitwise_or,
             "BXOR": torch.bitwise_xor}[op]
        return functools.reduce(f, inputs)
    wide = torch.float64 if dtype in FLOAT_DTYPES else torch.int64
    st = torch.stack([x.to(wide) for x in inputs])
    if op == "SUM":
        r = st.sum(0)
    elif op == "PRODUCT":
        r = st.prod(0)
    elif op == "MIN":
        r = st.amin(0) if st.numel() else st.sum(0)
    elif op == "MAX":
        r = st.amax(0) if st.numel() else st.sum(0)
    elif op == "AVG":
        s = st.sum(0)
        r = s / n if dtype in FLOAT_DTYPES else torch.div(
            s, n, rounding_mode="trunc")
    else:
        raise ValueError(op)
    return r.to(dtype)


_AVG_RTOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3,
             torch.float32: 1e-6, torch.float64: 1e-12}
# fp16 AVG divides each rank's input by n first and rounds there, then
# sums with a rounding per step (as NCCL): up to about n ulps of the
# inputs' magnitude (|x| <= 4 here: 2**-8 each) when partials cancel
_AVG_ATOL = {torch.float16: 1e-2}


def check(actual, expected, what, op=None):
    """Exact comparison (tolerance only for float AVG), with a message
    naming the first differing element."""
    assert actual.dtype == expected.dtype, \
        f"{what}: dtype {actual.dtype} != expected {expected.dtype}"
    assert actual.shape == expected.shape, \
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if op == "AVG" and expected.dtype in FLOAT_DTYPES:
        torch.testing.assert_close(
            actual, expected, rtol=_AVG_RTOL[expected.dtype],
            atol=_AVG_ATOL.get(expected.dtype, 1e-6),
            msg=lambda m: f"{what}: {m}")
        return
    if torch.equal(actual, expected):
        return
    a, e = actual.reshape(-1), expected.reshape(-1)
    bad = (a != e).nonzero()
    i = int(bad[0]) if bad.numel() else -1
    raise AssertionError(
        f"{what}: {bad.numel()} of {e.numel()} elements differ; first at "
        f"flat index {i}: got {a[i].item()!r}, expected {e[i].item()!r}")
