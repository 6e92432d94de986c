"""Overlap of a torch isend/irecv with the caller's own work.

    .venv/bin/python tools/bench/torch_p2p_overlap.py [--mib 64] [--work-ms 20]
        [--backend mooncake] [--iters 12]

Rank 0 posts an isend of --mib MiB to rank 1, which posts the irecv; both then
sleep --work-ms (the caller's own work) and wait. Prints the median and the
minimum time from the post to the end of the wait on rank 1: a backend that
moves the transfer in the background takes about max(work, transfer), one
that moves it only inside the wait takes work + transfer.
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run(rank, args, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if args.backend == "mooncake":
        import mooncake  # noqa: F401  (registers the backend)
    dist.init_process_group(args.backend, rank=rank, world_size=2)
    n = args.mib << 18  # float32 elements
    buf = torch.ones(n) if rank == 0 else torch.empty(n)
    times = []
    for _ in range(args.iters + 2):
        dist.barrier()
        t0 = time.perf_counter()
        w = dist.isend(buf, 1) if rank == 0 else dist.irecv(buf, 0)
        time.sleep(args.work_ms / 1000)
        w.wait()
        times.append((time.perf_counter() - t0) * 1e3)
    if rank == 1:
        t = sorted(times[2:])
        print(f"{args.backend}: {args.mib} MiB, {args.work_ms} ms of other "
              f"work: post -> end of wait median {t[len(t) // 2]:.1f} ms, "
              f"min {t[0]:.1f} ms")
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=64)
    p.add_argument("--work-ms", type=float, default=20)
    p.add_argument("--backend", default="mooncake")
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args()
    port = 20000 + os.getpid() % 20000
    mp.spawn(run, args=(args, port), nprocs=2)


if __name__ == "__main__":
    main()
