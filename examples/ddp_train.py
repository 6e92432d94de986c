"""A small DistributedDataParallel training loop on CPU with the mooncake backend.

    torchrun --nproc_per_node=4 examples/ddp_train.py
    torchrun --nproc_per_node=4 examples/ddp_train.py --backend gloo --epochs 3

Each rank trains an MLP on its shard of a synthetic regression problem; DDP
averages the gradients with all_reduce through the backend. Rank 0 prints the
loss averaged over ranks every epoch. At the end every rank's parameters are
gathered and compared bit for bit: they must be identical, since every rank
started from rank 0's weights (DDP broadcasts them) and applied the same
averaged gradients. Exits non-zero if they differ or the loss did not fall.
"""

import argparse
import datetime
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


def synthetic_data(n, d, seed=0):
    """y = sin(x @ w) + 0.5 * (x @ v) + noise, the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g) / d ** 0.5
    v = torch.randn(d, 1, generator=g) / d ** 0.5
    y = torch.sin(x @ w) + 0.5 * (x @ v) + 0.05 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="mooncake", help="mooncake (default) or gloo")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32, help="per rank")
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--bucket-cap-mb", type=float, default=0.05,
                    help="DDP gradient bucket size; small, so each step runs several all_reduces")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per operation")
    args = ap.parse_args()
    if "RANK" not in os.environ:
        sys.exit("run me with torchrun, e.g. torchrun --nproc_per_node=4 examples/ddp_train.py")
    if args.backend == "mooncake":
        import mooncake  # noqa: F401  registers backend "mooncake" for cpu and cuda

    torch.set_num_threads(1)  # several ranks share this machine's cores
    dist.init_process_group(backend=args.backend,
                            timeout=datetime.timedelta(seconds=args.timeout))
    rank, world = dist.get_rank(), dist.get_world_size()

    # Deliberately different initial weights per rank: DDP's constructor
    # broadcasts rank 0's parameters, so they must agree anyway by the end.
    torch.manual_seed(1234 + rank)
    model = nn.Sequential(
        nn.Linear(args.features, args.hidden), nn.ReLU(),
        nn.Linear(args.hidden, args.hidden), nn.ReLU(),
        nn.Linear(args.hidden, 1),
    )
    ddp = DDP(model, bucket_cap_mb=args.bucket_cap_mb)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.MSELoss()

    data = synthetic_data(args.samples, args.features)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, drop_last=True)

    if rank == 0:
        nparams = sum(p.numel() for p in model.parameters())
        print(f"backend {args.backend}, {world} ranks, {nparams} parameters, "
              f"{len(loader)} steps per epoch of {args.batch_size} samples per rank", flush=True)
    losses = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        total = torch.zeros(2, dtype=torch.float64)  # sum of losses, number of batches
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(ddp(x), y)
            loss.backward()  # DDP all_reduces the gradient buckets here
            opt.step()
            total += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
        dist.all_reduce(total)
        mean = (total[0] / total[1]).item()
        losses.append(mean)
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs}  loss {mean:.5f}  "
                  f"({time.perf_counter() - t0:.2f} s)", flush=True)

    # Every rank's parameters, flattened, side by side on every rank.
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    everyone = torch.empty(world * flat.numel(), dtype=flat.dtype)
    dist.all_gather_into_tensor(everyone, flat)
    everyone = everyone.view(world, -1)
    differing = [r for r in range(world) if not torch.equal(everyone[r], everyone[0])]
    learned = len(losses) < 2 or losses[-1] < 0.5 * losses[0]

    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        if differing:
            worst = (everyone - everyone[0]).abs().max().item()
            print(f"parameters DIFFER from rank 0's on ranks {differing} (max |diff| {worst:g})")
        else:
            print(f"parameters identical on all {world} ranks")
        if not learned:
            print(f"loss did not halve: {losses[0]:.5f} -> {losses[-1]:.5f}")
    return 0 if not differing and learned else 1


if __name__ == "__main__":
    sys.exit(main())
