"""nccl-tests style benchmark of torch.distributed backends.

    python -m mooncake.bench --ranks 2 -o all_reduce -b 8 -e 64M -f 4 --plot out.png

runs the same size sweep on every backend named by --backends (default
``mooncake,gloo``) in one invocation, prints one nccl-tests table per backend,
then a table with the ratio of the first backend to each other one per size
(latency ratio first/other: below 1 means the first is faster; busbw ratio
first/other: above 1 means the first is faster), and with --plot draws busbw
and time against size for every backend (log-log PNG).

Each backend gets its own launch: --ranks N fresh local processes and its own
process group, so one backend's state cannot disturb another's timings. Under
``torchrun`` (RANK and WORLD_SIZE set, no --ranks) the launched processes are
used instead: the default group is gloo and every other backend gets a
``new_group`` of all ranks.

Conventions follow nccl-tests (and the C ``mooncake-bench``):
  size  all_reduce, broadcast: the buffer; all_gather_into_tensor: the
        gathered output; reduce_scatter_tensor: the full input;
        all_to_all_single: the send buffer; sparse_all_reduce: every rank's
        values together (each rank a 1-D sparse COO tensor of count entries
        over 2 * count * n rows, overlapping the other ranks'; indices not
        counted); send_recv (as nccl-tests' sendrecv): what each rank sends
        to rank + 1 while it receives as much from rank - 1 (isend, irecv,
        then both waits). count = elements per call as nccl-tests prints it
        (per rank block for all_gather, reduce_scatter, all_to_all, sparse).
  time  average per iteration of -n calls between barriers, maximum over ranks
        (with -R, the median of R such batches).
  algbw size / time (GB/s, 1e9); busbw = algbw * factor, factor 2(n-1)/n for
        all_reduce, (n-1)/n for all_gather, reduce_scatter and all_to_all,
        1 for broadcast and send_recv.
  #wrong wrong elements over all ranks in one checked call per size, on inputs
        whose result is exact in the dtype (before the timed calls).
torch collectives are in place for all_reduce and broadcast and out of place
for the others, so there is one set of columns, not nccl-tests' two.
sparse_all_reduce (CPU) reduces a fresh clone of the input each call (the
result replaces the tensor's entries); the clone is in the time.
"""

import argparse
import datetime
import importlib
import json
import math
import os
import queue as queue_mod
import socket
import sys
import time
import traceback

# Imported lazily by the functions that need them so `--help` is instant and
# a missing torch gives a clear message instead of a traceback.
torch = None
dist = None

OPS = (
    "all_reduce",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "broadcast",
    "all_to_all_single",
    "sparse_all_reduce",
    "send_recv",
)

# name -> (torch dtype attribute, largest integer the type holds exactly)
DTYPES = {
    "int8": ("int8", 127),
    "uint8": ("uint8", 255),
    "int16": ("int16", 32767),
    "int32": ("int32", 2**31 - 1),
    "int64": ("int64", 2**53),
    "float16": ("float16", 2048),
    "bfloat16": ("bfloat16", 256),
    "float32": ("float32", 2**24),
    "float64": ("float64", 2**53),
}
DTYPE_ALIASES = {
    "half": "float16",
    "fp16": "float16",
    "bf16": "bfloat16",
    "float": "float32",
    "fp32": "float32",
    "double": "float64",
    "fp64": "float64",
    "int": "int32",
    "char": "int8",
    "long": "int64",
}
OP_ALIASES = {
    "allreduce": "all_reduce",
    "allgather": "all_gather_into_tensor",
    "all_gather": "all_gather_into_tensor",
    "reducescatter": "reduce_scatter_tensor",
    "reduce_scatter": "reduce_scatter_tensor",
    "bcast": "broadcast",
    "alltoall": "all_to_all_single",
    "sparse": "sparse_all_reduce",
    "all_to_all": "all_to_all_single",
    "sendrecv": "send_recv",
    "p2p": "send_recv",
}
BUILTIN_BACKENDS = ("gloo", "nccl", "mpi", "ucc", "xccl")


class BenchError(Exception):
    """A problem the user can act on; printed without a traceback."""


def _import_torch():
    global torch, dist
    if torch is None:
        try:
            import torch as _torch
            import torch.distributed as _dist
        except ImportError as e:
            raise BenchError(f"torch is required: {e}") from e
        torch, dist = _torch, _dist


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


def parse_size(text):
    """'8', '64K', '64M', '1G' (powers of 1024) -> bytes."""
    s = text.strip()
    mul = 1
    if s and s[-1] in "kKmMgG":
        mul = 1 << {"k": 10, "m": 20, "g": 30}[s[-1].lower()]
        s = s[:-1]
    if not s.isdigit():
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 8, 64K, 64M, 1G)")
    return int(s) * mul


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return v


def _nonneg_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return v


def _op(text):
    t = OP_ALIASES.get(text.lower(), text.lower())
    if t not in OPS:
        raise argparse.ArgumentTypeError(f"unknown op {text!r}; one of {', '.join(OPS)}")
    return t


def _dtype(text):
    t = DTYPE_ALIASES.get(text.lower(), text.lower())
    if t not in DTYPES:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {text!r}; one of {', '.join(DTYPES)} (or {', '.join(DTYPE_ALIASES)})"
        )
    return t


def _backends(text):
    names = [b.strip() for b in text.split(",") if b.strip()]
    if not names:
        raise argparse.ArgumentTypeError("empty backend list")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"backend named twice in {text!r}")
    return names


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m mooncake.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="SIZE accepts K, M, G suffixes (powers of 1024). The sweep goes "
        "b, b*f, b*f^2, ... while <= e, and ends with e itself when the "
        "steps miss it.\nExit status: 0 ok; 1 wrong results, a failed run or "
        "an explicitly requested backend that is unavailable; 2 usage error.",
    )
    p.add_argument("-b", "--minbytes", type=parse_size, default=8, metavar="SIZE",
                   help="smallest size (default 8)")
    p.add_argument("-e", "--maxbytes", type=parse_size, default=64 << 20, metavar="SIZE",
                   help="largest size (default 64M)")
    p.add_argument("-f", "--stepfactor", type=_positive_int, default=2, metavar="N",
                   help="multiply the size by N each step (default 2)")
    p.add_argument("-n", "--iters", type=_positive_int, default=20, metavar="N",
                   help="timed iterations per size (default 20)")
    p.add_argument("-w", "--warmup_iters", type=_nonneg_int, default=5, metavar="N",
                   help="untimed warm-up iterations per size (default 5)")
    p.add_argument("-o", "--op", type=_op, default="all_reduce",
                   help=f"collective: {', '.join(OPS)} (default all_reduce)")
    p.add_argument("-d", "--datatype", type=_dtype, default="float32", metavar="TYPE",
                   help=f"{' '.join(DTYPES)} (default float32)")
    p.add_argument("-R", "--repeats", type=_positive_int, default=1, metavar="R",
                   help="time R batches of -n calls and report the median batch "
                   "(default 1, as nccl-tests; more steadies a shared machine)")
    p.add_argument("-c", "--check", type=int, choices=(0, 1), default=1,
                   help="verify results once per size, count wrong elements (default 1)")
    p.add_argument("--root", type=_nonneg_int, default=0, help="broadcast root (default 0)")
    p.add_argument("--ranks", type=_positive_int, default=None, metavar="N",
                   help="local processes to spawn per backend (default 2; "
                   "under torchrun the launched ranks are used instead)")
    p.add_argument("--backends", type=_backends, default=None, metavar="A,B",
                   help="backends to compare, the first is the ratios' numerator "
                   "(default mooncake,gloo; mooncake,nccl with --device cuda)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="tensor device (default cpu); cuda uses GPU local_rank")
    p.add_argument("--timeout", type=_positive_int, default=300, metavar="S",
                   help="process-group timeout and the longest a launch may go "
                   "without reporting progress, seconds (default 300)")
    p.add_argument("--plot", metavar="PNG", help="write busbw and time vs size (log-log)")
    p.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    return p


def parse_args(argv):
    p = build_parser()
    a = p.parse_args(argv)
    if a.minbytes > a.maxbytes:
        p.error(f"-b {a.minbytes} is larger than -e {a.maxbytes}")
    if a.maxbytes > (64 << 30):
        p.error("-e larger than 64G")
    if a.stepfactor == 1 and a.minbytes != a.maxbytes:
        p.error("-f 1 with -b != -e would never end")
    if a.op == "sparse_all_reduce" and a.device != "cpu":
        p.error("sparse_all_reduce runs on cpu tensors only")
    if a.op == "send_recv" and a.ranks is not None and a.ranks < 2:
        p.error("send_recv needs --ranks >= 2")
    if a.backends is None:
        a.backends_explicit = False
        a.backends = ["mooncake", "nccl" if a.device == "cuda" else "gloo"]
    else:
        a.backends_explicit = True
    return a


def sizes_of(opts):
    out = []
    s = opts.minbytes
    while s <= opts.maxbytes:
        out.append(s)
        if s == 0 or s > opts.maxbytes // opts.stepfactor:
            break
        s *= opts.stepfactor
    if out[-1] != opts.maxbytes:
        out.append(opts.maxbytes)
    return out


# ---------------------------------------------------------------------------
# Layout, inputs and expected results (the same patterns as mooncake-bench)
# ---------------------------------------------------------------------------


def layout(op, size, esz, n):
    """-> (count, bytes): count as nccl-tests prints it, bytes the printed size."""
    if op in ("all_reduce", "broadcast", "send_recv"):
        count = size // esz
        return count, count * esz
    count = size // (esz * n)  # per-rank block
    return count, count * esz * n


def busbw_factor(op, n):
    if op == "all_reduce":
        return 2.0 * (n - 1) / n
    if op in ("broadcast", "send_recv"):
        return 1.0
    return (n - 1) / n  # sparse_all_reduce: an all_gather of the entries


class Pattern:
    """Inputs whose results are exact in the dtype.

    Reduction inputs of rank r are (3r + i) % m_red, with m_red chosen so the
    sum over n ranks stays below the type's exact-integer limit; data-movement
    inputs of rank r for destination block j are (7r + 3j + i) % m_mov.
    """

    def __init__(self, dtype_name, n, device):
        attr, lim = DTYPES[dtype_name]
        self.dtype = getattr(torch, attr)
        self.n = n
        self.device = device
        self.m_mov = min(lim, 100) + 1
        self.m_red = min(lim // n, 100) + 1
        self.garbage = 255 if dtype_name == "uint8" else -1

    def _idx(self, start, count):
        return torch.arange(start, start + count, dtype=torch.int64)

    def red_in(self, r, start, count):
        return (3 * r + self._idx(start, count)) % self.m_red

    def red_ref(self, start, count):
        acc = torch.zeros(count, dtype=torch.int64)
        for r in range(self.n):
            acc += self.red_in(r, start, count)
        return acc

    def mov_in(self, r, j, count):
        return (7 * r + 3 * j + self._idx(0, count)) % self.m_mov

    def to(self, t):
        return t.to(device=self.device, dtype=self.dtype)

    def empty(self, count):
        return torch.full((count,), self.garbage, dtype=self.dtype, device=self.device)


class OpCase:
    """Buffers and the call for one op at one size on one rank."""

    def __init__(self, op, count, pat, rank, n, root, group):
        self.op, self.count, self.pat = op, count, pat
        self.rank, self.n, self.root, self.group = rank, n, root, group
        c = count
        if op == "all_reduce":
            self.inp = pat.empty(c)
            self.out = self.inp
        elif op == "broadcast":
            self.inp = pat.empty(c)
            self.out = self.inp
        elif op == "all_gather_into_tensor":
            self.inp = pat.empty(c)
            self.out = pat.empty(c * n)
        elif op == "reduce_scatter_tensor":
            self.inp = pat.empty(c * n)
            self.out = pat.empty(c)
        elif op == "sparse_all_reduce":
            self.space = 2 * c * n
            self.inp = self.out = None
        elif op == "send_recv":
            self.inp = pat.empty(c)
            self.out = pat.empty(c)
        else:  # all_to_all_single
            self.inp = pat.empty(c * n)
            self.out = pat.empty(c * n)

    def _sparse_in(self, r):
        c, p = self.count, self.pat
        idx = (3 * torch.arange(c, dtype=torch.int64) + 5 * r) % self.space
        with torch.sparse.check_sparse_tensor_invariants(enable=True):
            return torch.sparse_coo_tensor(idx.unsqueeze(0), p.to(p.red_in(r, 0, c)),
                                           (self.space,)).coalesce()

    def fill(self):
        p, r, c, n = self.pat, self.rank, self.count, self.n
        if self.op == "all_reduce":
            self.inp.copy_(p.to(p.red_in(r, 0, c)))
        elif self.op == "broadcast":
            if r == self.root:
                self.inp.copy_(p.to(p.mov_in(r, 0, c)))
            else:
                self.inp.fill_(p.garbage)
        elif self.op == "all_gather_into_tensor":
            self.inp.copy_(p.to(p.mov_in(r, 0, c)))
            self.out.fill_(p.garbage)
        elif self.op == "reduce_scatter_tensor":
            self.inp.copy_(p.to(p.red_in(r, 0, c * n)))
            self.out.fill_(p.garbage)
        elif self.op == "sparse_all_reduce":
            self.inp = self._sparse_in(r)
            self.out = self.inp.clone()
        elif self.op == "send_recv":
            self.inp.copy_(p.to(p.mov_in(r, 0, c)))
            self.out.fill_(p.garbage)
        else:
            self.inp.copy_(p.to(torch.cat([p.mov_in(r, j, c) for j in range(n)])))
            self.out.fill_(p.garbage)

    def expected(self):
        p, r, c, n = self.pat, self.rank, self.count, self.n
        if self.op == "all_reduce":
            return p.to(p.red_ref(0, c))
        if self.op == "broadcast":
            return p.to(p.mov_in(self.root, 0, c))
        if self.op == "all_gather_into_tensor":
            return p.to(torch.cat([p.mov_in(j, 0, c) for j in range(n)]))
        if self.op == "reduce_scatter_tensor":
            return p.to(p.red_ref(r * c, c))
        if self.op == "sparse_all_reduce":
            acc = torch.zeros(self.space, dtype=torch.int64)
            for j in range(n):
                t = self._sparse_in(j)
                acc.index_add_(0, t.indices()[0], t.values().to(torch.int64))
            return p.to(acc)
        if self.op == "send_recv":
            return p.to(p.mov_in((r + n - 1) % n, 0, c))
        return p.to(torch.cat([p.mov_in(j, r, c) for j in range(n)]))

    def run(self):
        g = self.group
        if self.op == "all_reduce":
            dist.all_reduce(self.inp, op=dist.ReduceOp.SUM, group=g)
        elif self.op == "broadcast":
            dist.broadcast(self.inp, src=self._global(self.root), group=g)
        elif self.op == "all_gather_into_tensor":
            dist.all_gather_into_tensor(self.out, self.inp, group=g)
        elif self.op == "reduce_scatter_tensor":
            dist.reduce_scatter_tensor(self.out, self.inp, op=dist.ReduceOp.SUM, group=g)
        elif self.op == "sparse_all_reduce":
            self.out = self.inp.clone()
            dist.all_reduce(self.out, op=dist.ReduceOp.SUM, group=g)
        elif self.op == "send_recv":
            n, r = self.n, self.rank
            rw = dist.irecv(self.out, src=self._global((r + n - 1) % n), group=g)
            sw = dist.isend(self.inp, dst=self._global((r + 1) % n), group=g)
            sw.wait()
            rw.wait()
        else:
            dist.all_to_all_single(self.out, self.inp, group=g)

    def _global(self, group_rank):
        if self.group is None:
            return group_rank
        return dist.get_global_rank(self.group, group_rank)

    def count_wrong(self):
        got = self.out.cpu()
        if got.is_sparse:
            got = got.to_dense()
        want = self.expected().cpu()
        return int((got != want).sum().item())


# ---------------------------------------------------------------------------
# The sweep on one rank
# ---------------------------------------------------------------------------


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sweep(opts, group, rank, n, device, emit):
    """Run every size on `group`; rank 0 calls emit(row) per size."""
    pat = Pattern(opts.datatype, n, device)
    esz = torch.empty(0, dtype=pat.dtype).element_size()
    factor = busbw_factor(opts.op, n)
    for size in sizes_of(opts):
        count, nbytes = layout(opts.op, size, esz, n)
        if count == 0:
            if rank == 0:
                emit({"size": size, "skipped": f"under one element per rank ({n} ranks x {esz} B)"})
            continue
        case = OpCase(opts.op, count, pat, rank, n, opts.root, group)
        wrong = -1
        if opts.check:
            case.fill()
            case.run()
            _sync(device)
            w = torch.tensor([case.count_wrong()], dtype=torch.int64, device=device)
            dist.all_reduce(w, op=dist.ReduceOp.SUM, group=group)
            wrong = int(w.item())
        case.fill()
        for _ in range(opts.warmup_iters):
            case.run()
        _sync(device)
        batches = []
        for _ in range(opts.repeats):
            dist.barrier(group=group)
            t0 = time.perf_counter()
            for _ in range(opts.iters):
                case.run()
            _sync(device)
            us = (time.perf_counter() - t0) * 1e6 / opts.iters
            dist.barrier(group=group)
            t = torch.tensor([us], dtype=torch.float64, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
            batches.append(float(t.item()))
        us = sorted(batches)[len(batches) // 2]
        if rank == 0:
            algbw = nbytes / 1e3 / us if us > 0 else 0.0
            emit({
                "size": nbytes,
                "count": count,
                "type": opts.datatype,
                "redop": "sum" if opts.op in ("all_reduce", "reduce_scatter_tensor",
                                              "sparse_all_reduce") else "none",
                "root": opts.root if opts.op == "broadcast" else -1,
                "time_us": us,
                "algbw": algbw,
                "busbw": algbw * factor,
                "wrong": wrong,
            })
        del case


def _load_backend(name):
    """Make `name` usable by init_process_group; raises BenchError if not."""
    _import_torch()
    if name == "gloo":
        if not dist.is_gloo_available():
            raise BenchError("this torch was built without gloo")
        return
    if name == "nccl":
        if not (dist.is_nccl_available() and torch.cuda.is_available()):
            raise BenchError("nccl needs a CUDA build of torch and a GPU")
        return
    if name in BUILTIN_BACKENDS:
        return
    try:
        importlib.import_module(name)
    except Exception as e:  # ImportError, or the extension failing to load
        raise BenchError(f"`import {name}` failed ({type(e).__name__}: {e})") from e
    if name not in dist.Backend.backend_list:
        raise BenchError(f"`import {name}` did not register a torch.distributed backend {name!r}")


def _device_for(opts, local_rank):
    if opts.device == "cuda":
        if not torch.cuda.is_available():
            raise BenchError("--device cuda but torch.cuda.is_available() is False")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _worker(rank, n, backend, init_method, opts, q):
    """One spawned rank: its own process group on `backend`."""
    code = 0
    try:
        _import_torch()
        torch.set_num_threads(1)  # the reference computations, not the backends
        _load_backend(backend)
        device = _device_for(opts, rank)
        dist.init_process_group(
            backend=backend, init_method=init_method, rank=rank, world_size=n,
            timeout=datetime.timedelta(seconds=opts.timeout),
        )
        sweep(opts, None, rank, n, device, lambda row: q.put(("row", row)))
        dist.barrier()
        dist.destroy_process_group()
        if rank == 0:
            q.put(("done", None))
    except BaseException as e:  # report, then exit non-zero so the parent stops
        msg = str(e) if isinstance(e, BenchError) else traceback.format_exc()
        q.put(("error", f"rank {rank}: {msg.strip()}"))
        code = 1
    q.close()
    q.join_thread()  # os._exit would drop messages still in the feeder thread
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: a wedged backend cannot block it


# ---------------------------------------------------------------------------
# Launching and printing
# ---------------------------------------------------------------------------


HEADER = (
    "#\n"
    f"# {'size':>10} {'count':>12} {'type':>9} {'redop':>6} {'root':>5} "
    f"{'time':>10} {'algbw':>7} {'busbw':>7} {'#wrong':>6}\n"
    f"# {'(B)':>10} {'(elements)':>12} {'':>9} {'':>6} {'':>5} "
    f"{'(us)':>10} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}"
)


def format_row(row):
    if "skipped" in row:
        return f"# {row['size']:>10} skipped: {row['skipped']}"
    wrong = "N/A" if row["wrong"] < 0 else str(row["wrong"])
    return (
        f"  {row['size']:>10} {row['count']:>12} {row['type']:>9} {row['redop']:>6} "
        f"{row['root']:>5} {_fmt_time(row['time_us']):>10} {row['algbw']:>7.2f} "
        f"{row['busbw']:>7.2f} {wrong:>6}"
    )


def _fmt_time(us):
    if us >= 1e6:
        return f"{us:.4g}"
    if us >= 100:
        return f"{us:.1f}"
    return f"{us:.2f}"


def _fmt_bytes(v):
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if v >= (1 << shift):
            return f"{v / (1 << shift):g}{unit}"
    return f"{v:g}"


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_all(procs):
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)


def run_spawned(opts, backend, n, out):
    """Launch n processes for `backend`; returns (rows, error or None)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    procs = [ctx.Process(target=_worker, args=(r, n, backend, init_method, opts, q),
                         daemon=True) for r in range(n)]
    for p in procs:
        p.start()
    rows, error = [], None
    last = time.monotonic()
    try:
        while True:
            try:
                kind, payload = q.get(timeout=0.5)
            except queue_mod.Empty:
                dead = [p for p in procs if not p.is_alive() and p.exitcode != 0]
                if dead:
                    # An error message may still be in flight; give it a moment.
                    try:
                        kind, payload = q.get(timeout=2)
                    except queue_mod.Empty:
                        error = (f"rank {procs.index(dead[0])} exited with status "
                                 f"{dead[0].exitcode} without reporting")
                        break
                elif time.monotonic() - last > opts.timeout + 30:
                    error = f"no progress for {opts.timeout + 30} s; killed"
                    break
                else:
                    continue
            last = time.monotonic()
            if kind == "row":
                rows.append(payload)
                print(format_row(payload), file=out, flush=True)
            elif kind == "error":
                error = payload
                break
            else:
                break
    except KeyboardInterrupt:
        _kill_all(procs)
        raise
    if error is None:
        deadline = time.monotonic() + 30
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
    _kill_all(procs)
    return rows, error


def run_in_place(opts, backend, out):
    """Under torchrun: run the sweep on a group of `backend` in this process."""
    rank, n = dist.get_rank(), dist.get_world_size()
    group = None if backend == dist.get_backend() else dist.new_group(
        backend=backend, timeout=datetime.timedelta(seconds=opts.timeout))
    device = _device_for(opts, int(os.environ.get("LOCAL_RANK", "0")))
    rows = []

    def emit(row):
        rows.append(row)
        print(format_row(row), file=out, flush=True)

    sweep(opts, group, rank, n, device, emit)
    dist.barrier(group=group)
    return rows, None


def ratio_table(opts, results, out):
    base = opts.backends[0]
    if base not in results:
        return
    others = [b for b in opts.backends[1:] if b in results]
    by_size = {b: {r["size"]: r for r in results[b] if "skipped" not in r} for b in results}
    for other in others:
        print(f"#\n# ratio {base} / {other}: time ratio < 1 and busbw ratio > 1 "
              f"mean {base} is faster", file=out)
        print(f"# {'size':>10} {base + ' us':>13} {other + ' us':>13} {'time ratio':>10} "
              f"{base + ' busbw':>15} {other + ' busbw':>15} {'busbw ratio':>11}", file=out)
        for size, a in by_size[base].items():
            b = by_size[other].get(size)
            if b is None:
                continue
            tr = a["time_us"] / b["time_us"] if b["time_us"] > 0 else math.nan
            br = a["busbw"] / b["busbw"] if b["busbw"] > 0 else math.nan
            print(f"  {size:>10} {_fmt_time(a['time_us']):>13} {_fmt_time(b['time_us']):>13} "
                  f"{tr:>10.3f} {a['busbw']:>15.3f} {b['busbw']:>15.3f} {br:>11.2f}", file=out)


def plot(opts, results, n, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError as e:
        raise BenchError(f"--plot needs matplotlib: {e}") from e
    fig, (ax_bw, ax_t) = plt.subplots(1, 2, figsize=(12, 4.8))
    for b in opts.backends:
        rows = [r for r in results.get(b, []) if "skipped" not in r and r["busbw"] > 0]
        if not rows:
            continue
        xs = [r["size"] for r in rows]
        ax_bw.plot(xs, [r["busbw"] for r in rows], marker="o", label=b)
        ax_t.plot(xs, [r["time_us"] for r in rows], marker="o", label=b)
    size_fmt = matplotlib.ticker.FuncFormatter(lambda v, _pos: _fmt_bytes(v))
    for ax, ylabel, title in ((ax_bw, "busbw (GB/s)", "bus bandwidth"),
                              (ax_t, "time per call (us)", "latency")):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=4))
        ax.xaxis.set_major_formatter(size_fmt)
        ax.set_yscale("log")
        ax.set_xlabel("size (bytes)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"{opts.op}, {opts.datatype}, {n} ranks, {opts.device} "
                 f"(-n {opts.iters} -w {opts.warmup_iters} -R {opts.repeats})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    out = sys.stdout
    try:
        _import_torch()
    except BenchError as e:
        print(f"mooncake.bench: {e}", file=sys.stderr)
        return 1
    if opts.device == "cuda" and not torch.cuda.is_available():
        print("mooncake.bench: --device cuda but torch.cuda.is_available() is False",
              file=sys.stderr)
        return 1
    under_torchrun = opts.ranks is None and "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if under_torchrun:
        n = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        torch.set_num_threads(1)
        dist.init_process_group(backend="gloo" if opts.device == "cpu" else "nccl",
                                timeout=datetime.timedelta(seconds=opts.timeout))
        if rank != 0:
            out = open(os.devnull, "w")
    else:
        n = opts.ranks or 2
        rank = 0
    if opts.root >= n:
        print(f"mooncake.bench: --root {opts.root} is not a rank of {n}", file=sys.stderr)
        return 2

    print(f"# mooncake.bench: op {opts.op}, dtype {opts.datatype}, {n} ranks, device "
          f"{opts.device}, -b {opts.minbytes} -e {opts.maxbytes} -f {opts.stepfactor} "
          f"-n {opts.iters} -w {opts.warmup_iters} -R {opts.repeats} -c {opts.check}", file=out)
    print(f"# torch {torch.__version__}, backends {','.join(opts.backends)}, "
          f"host {socket.gethostname()}, {os.cpu_count()} CPUs", file=out, flush=True)

    results, status, completed = {}, 0, []
    for backend in opts.backends:
        try:
            if not under_torchrun:
                _load_backend(backend)  # fail early and clearly, before spawning
        except BenchError as e:
            print(f"#\n# backend {backend}: unavailable: {e}; skipped", file=out, flush=True)
            if opts.backends_explicit:
                status = 1
            continue
        print(f"#\n# backend {backend}\n{HEADER}", file=out, flush=True)
        try:
            if under_torchrun:
                _load_backend(backend)
                rows, error = run_in_place(opts, backend, out)
            else:
                rows, error = run_spawned(opts, backend, n, out)
        except BenchError as e:
            rows, error = [], str(e)
        if error is not None:
            print(f"# backend {backend}: FAILED: {error}", file=out, flush=True)
            status = 1
        else:
            completed.append(backend)
        measured = [r for r in rows if "skipped" not in r]
        wrong = sum(r["wrong"] for r in measured if r["wrong"] > 0)
        if measured:
            avg = sum(r["busbw"] for r in measured) / len(measured)
            print(f"# Out of bounds values : {wrong} {'FAILED' if wrong else 'OK'}", file=out)
            print(f"# Avg bus bandwidth    : {avg:g}", file=out, flush=True)
        if wrong:
            status = 1
        results[backend] = rows

    ran = [b for b in opts.backends if results.get(b)]
    if len(ran) >= 2:
        ratio_table(opts, results, out)
    if not completed:
        print("# no backend ran", file=out)
        status = 1
    if rank == 0 and opts.plot and ran:
        try:
            plot(opts, results, n, opts.plot)
            print(f"# plot written to {opts.plot}", file=out)
        except BenchError as e:
            print(f"mooncake.bench: {e}", file=sys.stderr)
            status = 1
    if rank == 0 and opts.json:
        with open(opts.json, "w") as f:
            json.dump({"op": opts.op, "dtype": opts.datatype, "ranks": n,
                       "device": opts.device, "iters": opts.iters, "repeats": opts.repeats,
                       "warmup_iters": opts.warmup_iters, "torch": torch.__version__,
                       "results": results}, f, indent=1)
    out.flush()
    if under_torchrun:
        dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
