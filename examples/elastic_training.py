"""Training that survives a killed rank.

    .venv/bin/python examples/elastic_training.py [--ranks 4] [--steps 60]
                                                  [--kill-rank 2] [--kill-at 20]

The launcher (this process) hosts the torch TCPStore and starts `--ranks`
worker processes, each training the same small model with data-parallel
gradient averaging (all_reduce AVG on backend="mooncake"). After the victim
reports step `--kill-at`, the launcher SIGKILLs it. The survivors' interrupted
all_reduce re-runs over the new view (auto mode) and training goes on over
the remaining ranks: AVG divides by the active count. At the end every
survivor checks that it reports the same view and holds bit-identical
parameters (an all_gather of a digest), and the launcher checks every
survivor exited cleanly.

(torchrun is not used here: its agent tears the whole job down when one worker
dies, which is exactly what this example shows is unnecessary.)

A replacement process rejoining the failed slot is not shown yet: the engine
does not admit joiners (see README, "Status").
"""

import argparse
import hashlib
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from datetime import timedelta


def say(text):
    """One write() per line: lines of several processes never interleave."""
    os.write(1, (text + "\n").encode())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, world, port, args, progress):
    import torch
    import torch.distributed as dist
    import mooncake

    store = dist.TCPStore("127.0.0.1", port, world, is_master=False,
                          timeout=timedelta(seconds=60))
    dist.init_process_group(backend="mooncake", store=store, rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    torch.manual_seed(0)  # same initial parameters everywhere
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    true_w = torch.linspace(-1, 1, 16)
    for step in range(args.steps):
        g = torch.Generator().manual_seed(1000 * step + rank)
        x = torch.randn(64, 16, generator=g)
        y = (x @ true_w).unsqueeze(1)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
        opt.step()
        progress[rank] = step + 1
        if step % 10 == 0 or step == args.steps - 1:
            say(f"rank {rank} step {step:3d} loss {loss.item():.4f} "
                f"epoch {mooncake.get_epoch()} active "
                f"{mooncake.get_active_ranks()}")
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    digest = hashlib.sha256(flat.numpy().tobytes()).digest()[:8]
    mine = torch.tensor(list(digest), dtype=torch.uint8)
    out = torch.zeros(world * 8, dtype=torch.uint8)
    dist.all_gather_into_tensor(out, mine)
    active = mooncake.get_active_ranks()
    rows = out.view(world, 8)
    same = all(torch.equal(rows[r], mine) for r in active)
    dead = [r for r in range(world) if r not in active]
    zero = all(int(rows[r].sum()) == 0 for r in dead)  # removed: zero-filled
    say(f"rank {rank}: final epoch {mooncake.get_epoch()} active {active} "
        f"params {digest.hex()} identical on all active ranks: {same}")
    epoch = mooncake.get_epoch()
    dist.destroy_process_group()
    ok = same and zero and rank in active
    if args.kill_rank >= 0:  # one view change, without the victim
        ok = ok and dead == [args.kill_rank] and epoch == 2
    sys.exit(0 if ok else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--kill-rank", type=int, default=2,
                    help="rank to SIGKILL (-1: none)")
    ap.add_argument("--kill-at", type=int, default=20,
                    help="kill once the victim finished this many steps")
    args = ap.parse_args()
    if args.kill_rank >= args.ranks:
        ap.error("--kill-rank must be < --ranks")
    import torch.distributed as dist
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, args.ranks, is_master=True,
                          wait_for_workers=False, timeout=timedelta(seconds=60))
    ctx = mp.get_context("spawn")
    progress = ctx.Array("i", args.ranks, lock=False)
    procs = [ctx.Process(target=worker,
                         args=(r, args.ranks, port, args, progress))
             for r in range(args.ranks)]
    for p in procs:
        p.start()
    t0 = time.monotonic()
    killed = False
    while any(p.is_alive() for p in procs):
        if (args.kill_rank >= 0 and not killed and
                progress[args.kill_rank] >= args.kill_at):
            os.kill(procs[args.kill_rank].pid, signal.SIGKILL)
            killed = True
            print(f"launcher: SIGKILL rank {args.kill_rank} after step "
                  f"{progress[args.kill_rank]}")
        if time.monotonic() - t0 > 300:
            print("launcher: timed out", flush=True)
            for p in procs:
                p.kill()
            break
        time.sleep(0.001)
    for p in procs:
        p.join()
    bad = [r for r, p in enumerate(procs)
           if r != args.kill_rank and p.exitcode != 0]
    if args.kill_rank >= 0 and not killed:
        bad.append(args.kill_rank)
    del store
    if bad:
        print(f"launcher: FAILED: ranks {bad} did not finish cleanly")
        return 1
    print(f"launcher: OK: survivors finished {args.steps} steps with "
          f"identical parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
