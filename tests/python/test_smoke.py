"""Smoke test of the mooncake torch backend: 2 processes, file:// and tcp://
rendezvous, all_reduce, barrier, async all_reduce through Work.wait() and
Work.get_future().wait(), and a clear error for bad input.

Self-contained (no shared harness): each rank is this file run as a script.
"""

import os
import socket
import subprocess
import sys

import pytest

WORLD = 2
TIMEOUT_S = 120


def _worker(rank, world, init):
    import datetime

    import torch
    import torch.distributed as dist

    import mooncake

    assert mooncake.__version__
    dist.init_process_group("mooncake", init_method=init, rank=rank,
                            world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    assert dist.get_backend() == "mooncake"
    expect = float(sum(range(1, world + 1)))

    # blocking all_reduce, float and int
    t = torch.full((1000,), float(rank + 1))
    dist.all_reduce(t)
    assert torch.equal(t, torch.full((1000,), expect)), t[:4]
    i = torch.arange(10, dtype=torch.int64) * (rank + 1)
    dist.all_reduce(i, op=dist.ReduceOp.MAX)
    assert torch.equal(i, torch.arange(10, dtype=torch.int64) * world), i

    dist.barrier()

    # async: Work.wait()
    t = torch.full((33,), float(rank + 1))
    work = dist.all_reduce(t, async_op=True)
    assert work.wait()
    assert work.is_completed()
    assert torch.equal(t, torch.full((33,), expect)), t

    # async: future
    t = torch.full((5,), float(rank + 1), dtype=torch.float64)
    fut = dist.all_reduce(t, async_op=True).get_future()
    res = fut.wait()
    assert isinstance(res, list) and len(res) == 1
    assert torch.equal(res[0], torch.full((5,), expect, dtype=torch.float64))
    assert torch.equal(t, res[0])

    # future with a chained callback
    t = torch.ones(3)
    fut = dist.all_reduce(t, async_op=True).get_future()
    doubled = fut.then(lambda f: f.value()[0] * 2).wait()
    assert torch.equal(doubled, torch.full((3,), 2.0 * world)), doubled

    # bad input: a RuntimeError naming the problem, on every rank alike
    try:
        dist.all_reduce(torch.ones(2), op=dist.ReduceOp.BAND)
    except RuntimeError as e:
        assert "band" in str(e).lower() or "float" in str(e).lower(), str(e)
    else:
        raise AssertionError("BAND on float32 did not raise")

    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank} ok", flush=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(init):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(WORLD),
                               init], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for r in range(WORLD)]
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, _ = p.communicate()
            out += "\n<timed out>"
        outs.append(out)
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"rank {r} ok" in out, \
            f"rank {r} exited {p.returncode}:\n{out}"


def test_smoke_file_init(tmp_path):
    _run(f"file://{tmp_path / 'store'}")


def test_smoke_tcp_init():
    _run(f"tcp://127.0.0.1:{_free_port()}")


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
