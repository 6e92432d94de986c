"""Training that survives a killed rank, and takes in its replacement.

    .venv/bin/python examples/elastic_training.py [--ranks 4] [--steps 60]
                                                  [--kill-rank 2] [--kill-at 20]
                                                  [--rejoin-after 5]

The launcher (this process) hosts the torch TCPStore and starts `--ranks`
worker processes, each training the same small model with data-parallel
gradient averaging (all_reduce AVG on backend="mooncake"). After the victim
reports step `--kill-at`, the launcher SIGKILLs it. The survivors' interrupted
all_reduce re-runs over the new view (auto mode) and training goes on over
the remaining ranks: AVG divides by the active count.

Once the survivors have run `--rejoin-after` more steps, the launcher lets a
standby process (started with the others, so that it has imported torch
already) take the killed slot: MOONCAKE_JOIN=1, rank = that slot. Its
init_process_group waits until the members admit it: they call
mooncake.admit_joiners() at the end of every step, and when it returns new
ranks they broadcast the step counter and the parameters from the lowest old
member. The replacement's first collective is that broadcast, so it continues
at the same step with the same parameters. Members that reach the last step
before it got in keep admitting until the group is whole again.

At the end every rank checks that it reports the same view and holds
bit-identical parameters (an all_gather of a digest), and the launcher checks
that every process still in the group exited cleanly.

(torchrun is not used here: its agent tears the whole job down when one worker
dies, which is exactly what this example shows is unnecessary.)
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


def catch_up(model, rank, step):
    """Broadcast the step counter and the parameters from the lowest member
    that is not new (a joiner passes step=None and learns it)."""
    import torch
    import torch.distributed as dist
    import mooncake
    new = set(mooncake.get_joined_ranks())
    root = min(r for r in mooncake.get_active_ranks() if r not in new)
    t = torch.tensor([-1 if step is None else step], dtype=torch.int64)
    dist.broadcast(t, src=root)
    for p in model.parameters():
        dist.broadcast(p.data, src=root)
    if rank == root:
        say(f"rank {rank}: ranks {sorted(new)} joined; sent them step "
            f"{int(t)} and the parameters")
    return int(t)


def worker(rank, world, port, args, progress, go=None):
    import torch
    import torch.distributed as dist
    import mooncake
    join = go is not None
    if join:  # a standby: wait for the launcher, then take the free slot
        go.wait()
        os.environ["MOONCAKE_JOIN"] = "1"

    store = dist.TCPStore("127.0.0.1", port, world, is_master=False,
                          timeout=timedelta(seconds=60))
    dist.init_process_group(backend="mooncake", store=store, rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    torch.manual_seed(0)  # same initial parameters everywhere
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    true_w = torch.linspace(-1, 1, 16)
    step = 0
    if join:
        step = catch_up(model, rank, None)
        say(f"rank {rank}: replacement admitted in epoch "
            f"{mooncake.get_epoch()}, continuing at step {step}")
    while step < args.steps:
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
        time.sleep(args.step_ms / 1000)  # stands for the real compute
        step += 1
        if mooncake.admit_joiners():  # the step boundary: newcomers enter
            catch_up(model, rank, step)
    t_end = time.monotonic() + 60
    while (args.kill_rank >= 0 and args.rejoin_after >= 0 and
           len(mooncake.get_active_ranks()) < world and
           time.monotonic() < t_end):
        if mooncake.admit_joiners():  # finish with the whole group
            catch_up(model, rank, step)
        else:
            time.sleep(0.02)
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
    if args.kill_rank >= 0 and args.rejoin_after >= 0:
        ok = ok and dead == [] and epoch == 3  # removed, then admitted again
    elif args.kill_rank >= 0:  # one view change, without the victim
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
    ap.add_argument("--rejoin-after", type=int, default=5,
                    help="start a replacement once the survivors ran this "
                         "many more steps (-1: none)")
    ap.add_argument("--step-ms", type=float, default=10,
                    help="sleep per step, standing for the compute")
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
    go = ctx.Event()
    spare = None
    if args.kill_rank >= 0 and args.rejoin_after >= 0:
        spare = ctx.Process(target=worker, args=(args.kill_rank, args.ranks,
                                                 port, args, progress, go))
        spare.start()
    for p in procs:
        p.start()
    t0 = time.monotonic()
    killed = False
    killed_at = 0
    replaced = False
    survivors = [r for r in range(args.ranks) if r != args.kill_rank]
    while any(p.is_alive() for p in procs):
        if (args.kill_rank >= 0 and not killed and
                progress[args.kill_rank] >= args.kill_at):
            os.kill(procs[args.kill_rank].pid, signal.SIGKILL)
            killed = True
            killed_at = progress[args.kill_rank]
            print(f"launcher: SIGKILL rank {args.kill_rank} after step "
                  f"{killed_at}", flush=True)
        if (killed and not replaced and args.rejoin_after >= 0 and
                min(progress[r] for r in survivors) >=
                min(killed_at + args.rejoin_after, args.steps)):
            procs[args.kill_rank].join()
            procs[args.kill_rank] = spare
            go.set()
            replaced = True
            print(f"launcher: started a replacement for rank "
                  f"{args.kill_rank}", flush=True)
        if time.monotonic() - t0 > 300:
            print("launcher: timed out", flush=True)
            for p in procs + [spare]:
                if p is not None:
                    p.kill()
            break
        time.sleep(0.001)
    for p in procs:
        p.join()
    if spare is not None and not replaced:
        spare.kill()
        spare.join()
    bad = [r for r, p in enumerate(procs)
           if (r != args.kill_rank or replaced) and p.exitcode != 0]
    if args.kill_rank >= 0 and not killed:
        bad.append(args.kill_rank)
    if args.kill_rank >= 0 and args.rejoin_after >= 0 and not replaced:
        print("launcher: FAILED: the survivors never got far enough to "
              "start a replacement (more --steps?)")
        bad.append(args.kill_rank)
    del store
    if bad:
        print(f"launcher: FAILED: ranks {bad} did not finish cleanly")
        return 1
    who = "all ranks, the replacement included," if replaced else "survivors"
    print(f"launcher: OK: {who} finished {args.steps} steps with "
          f"identical parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
