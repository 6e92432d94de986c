"""CUDA tensors through the mooncake backend (pinned-host staging path).

Two processes share GPU 0 (one GPU is enough). Every result is checked on
the host against values computed locally. Skipped without a GPU.
"""

import os
import socket
import subprocess
import sys

import pytest
import torch

WORLD = 2
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device")


def _worker(rank, world, init):
    import datetime

    import torch.distributed as dist

    import mooncake

    assert mooncake._C.cuda_staging(), "built without the CUDA path"
    dev = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    dist.init_process_group("mooncake", init_method=init, rank=rank,
                            world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    s = float(sum(range(1, world + 1)))
    R = float(rank + 1)

    def full(n, v, dtype=torch.float32):
        return torch.full((n,), v, dtype=dtype, device=dev)

    def check(name, got, want):
        assert got.is_cuda, name
        assert torch.equal(got.cpu(), want.cpu()), f"{name}: {got} != {want}"

    # all_reduce, several dtypes, on a non-default stream too
    for dt in (torch.float32, torch.float16, torch.bfloat16, torch.int64):
        t = full(1 << 12, R, dt)
        dist.all_reduce(t)
        check(f"all_reduce {dt}", t, full(1 << 12, s, dt))
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        t = full(100, R) * 2  # produced on the side stream
        dist.all_reduce(t)
        t.mul_(0.5)  # consumed on the side stream after the op
    side.synchronize()
    check("all_reduce on side stream", t, full(100, s))

    # large enough that the H2D copy is still in flight at return
    big = torch.full((1 << 22,), R, device=dev)
    dist.all_reduce(big)
    assert big.sum().item() == s * (1 << 22)

    # async + wait, async + future
    t = full(64, R)
    w = dist.all_reduce(t, async_op=True)
    w.wait()
    check("async wait", t, full(64, s))
    t = full(64, R)
    fut = dist.all_reduce(t, async_op=True).get_future()
    res = fut.wait()
    check("future", res[0], full(64, s))

    # non-contiguous CUDA tensor
    nc = torch.full((8, 4), R, device=dev).t()
    dist.all_reduce(nc)
    check("non-contiguous", nc, torch.full((4, 8), s, device=dev))

    # all_gather_into_tensor, reduce_scatter_tensor, broadcast, all_to_all
    out = torch.empty(world * 3, device=dev)
    dist.all_gather_into_tensor(out, full(3, R))
    check("all_gather_into_tensor", out,
          torch.arange(1, world + 1, device=dev).float().repeat_interleave(3))
    out = torch.empty(3, device=dev)
    dist.reduce_scatter_tensor(out, full(3 * world, R))
    check("reduce_scatter_tensor", out, full(3, s))
    t = full(5, R)
    dist.broadcast(t, src=world - 1)
    check("broadcast", t, full(5, float(world)))
    inp = torch.arange(world * 2, device=dev).float() + 100 * rank
    out = torch.empty_like(inp)
    dist.all_to_all_single(out, inp)
    want = torch.tensor([100 * r + 2 * rank + k for r in range(world)
                         for k in range(2)], device=dev).float()
    check("all_to_all_single", out, want)

    # send / recv
    if rank == 0:
        dist.send(full(6, 42.0), 1, tag=7)
    elif rank == 1:
        r = torch.empty(6, device=dev)
        dist.recv(r, 0, tag=7)
        check("recv", r, full(6, 42.0))

    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank} ok", flush=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cuda_ops():
    init = f"tcp://127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(WORLD),
                               init], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for r in range(WORLD)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            outs.append(p.communicate()[0] + "\n<timed out>")
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"rank {r} ok" in out, \
            f"rank {r} exited {p.returncode}:\n{out}"


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
