"""A few collectives over torch.distributed with the mooncake backend.

    torchrun --nproc_per_node=4 examples/allreduce.py
    torchrun --nproc_per_node=4 examples/allreduce.py --backend gloo   # same, on gloo

Every rank checks each result against the value it must have and the script
exits non-zero if any rank saw a wrong one.
"""

import argparse
import datetime
import os
import sys

import torch
import torch.distributed as dist


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="mooncake", help="mooncake (default) or gloo")
    ap.add_argument("--timeout", type=int, default=60, help="seconds per operation")
    args = ap.parse_args()
    if "RANK" not in os.environ:
        sys.exit("run me with torchrun, e.g. torchrun --nproc_per_node=4 examples/allreduce.py")
    if args.backend == "mooncake":
        import mooncake  # noqa: F401  registers backend "mooncake" for cpu and cuda

    # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT: env:// rendezvous.
    dist.init_process_group(backend=args.backend,
                            timeout=datetime.timedelta(seconds=args.timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    ok = True
    lines = []

    def report(name, got, want):
        nonlocal ok
        good = torch.equal(got, want)
        ok &= good
        lines.append(f"[rank {rank}] {name:<24} {got.tolist()}"
                     + ("" if good else f"  WRONG, want {want.tolist()}"))

    # all_reduce: every rank contributes rank+1; the sum is 1+2+...+world.
    t = torch.full((4,), float(rank + 1))
    dist.all_reduce(t)
    report("all_reduce(sum)", t, torch.full((4,), world * (world + 1) / 2))

    t = torch.tensor([rank, -rank], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    report("all_reduce(max)", t, torch.tensor([world - 1, 0]))

    # broadcast from the last rank.
    t = torch.arange(3, dtype=torch.float32) + (100 if rank == world - 1 else 0)
    dist.broadcast(t, src=world - 1)
    report("broadcast", t, torch.arange(3, dtype=torch.float32) + 100)

    # all_gather_into_tensor: rank r contributes [r, r].
    out = torch.empty(2 * world, dtype=torch.int32)
    dist.all_gather_into_tensor(out, torch.full((2,), rank, dtype=torch.int32))
    report("all_gather_into_tensor", out, torch.arange(world, dtype=torch.int32).repeat_interleave(2))

    # reduce_scatter_tensor: everyone sends 0..world-1; rank r gets world * r.
    out = torch.empty(1)
    dist.reduce_scatter_tensor(out, torch.arange(world, dtype=torch.float32))
    report("reduce_scatter_tensor", out, torch.tensor([float(world * rank)]))

    # all_to_all_single: rank r sends 10*r + j to rank j, so receives 10*j + r from j.
    out = torch.empty(world, dtype=torch.int64)
    dist.all_to_all_single(out, torch.arange(world) + 10 * rank)
    report("all_to_all_single", out, torch.arange(world) * 10 + rank)

    # An asynchronous all_reduce overlapping some local work.
    t = torch.ones(1 << 20)
    work = dist.all_reduce(t, async_op=True)
    local = torch.randn(256, 256) @ torch.randn(256, 256)  # noqa: F841  work done meanwhile
    work.wait()
    report("all_reduce async (sum)", t[:2], torch.full((2,), float(world)))

    # Rank 0 prints everyone's lines in rank order (gather_object pickles them
    # and moves them with gather, so this is one more collective).
    everyone = [None] * world if rank == 0 else None
    dist.gather_object(lines, everyone, dst=0)
    dist.barrier()
    flag = torch.tensor([0 if ok else 1])
    dist.all_reduce(flag)
    dist.destroy_process_group()
    if rank == 0:
        print(f"backend {args.backend}, {world} ranks")
        for rank_lines in everyone:
            print("\n".join(rank_lines))
        print("all results correct" if flag.item() == 0 else f"{flag.item()} rank(s) saw wrong results")
    return 0 if flag.item() == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
