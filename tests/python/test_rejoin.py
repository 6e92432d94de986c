"""Joins through torch: a process started with MOONCAKE_JOIN=1 and
rank=<slot> takes a free slot of a running group (docs/fault-model.md,
guarantee 6).

- scale-up: 3 slots, MOONCAKE_INITIAL_SIZE=2; the members run all_reduce +
  mooncake.admit_joiners() steps until rank 2 is in; from then on every
  all_reduce sums over 3 ranks, on every rank;
- a join request for a slot whose process is alive times out with a clear
  error, and the members never notice;
- a bad MOONCAKE_INITIAL_SIZE is refused with an error naming it.

(Rejoin after a real SIGKILL through torch: tests/python/test_elastic_example.py;
the engine's kill/replace loops: tests/fault/test_rejoin.c.)
"""

import multiprocessing as mp
import os
import socket
import traceback
from datetime import timedelta

import pytest
import torch.distributed as dist


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _member(rank, world, port, env, q, steps_after, stop_key=None):
    try:
        os.environ.update(env)
        import torch
        import torch.distributed as dist
        import mooncake
        store = dist.TCPStore("127.0.0.1", port, world, is_master=False,
                              timeout=timedelta(seconds=60))
        dist.init_process_group("mooncake", store=store, rank=rank,
                                world_size=world, timeout=timedelta(seconds=60))
        log = []
        joined = []
        step = 0
        if os.environ.get("MOONCAKE_JOIN") == "1":
            joined = [rank]
            t = torch.tensor([-1], dtype=torch.int64)
            dist.broadcast(t, src=0)  # the members' step counter
            step = int(t)
        else:
            # members: steps until a joiner got in (or the test sets
            # stop_key), then `steps_after` more
            import time
            t_end = time.monotonic() + 60
            while not joined and time.monotonic() < t_end:
                t = torch.full((9,), float(rank + 1))
                # the last element: "stop", decided by all ranks together
                t[8] = float(bool(stop_key and store.check([stop_key])))
                dist.all_reduce(t)
                log.append((step, mooncake.get_active_ranks(), t[0].item()))
                if t[8] > 0:
                    break
                step += 1
                joined = mooncake.admit_joiners()
                if joined:
                    dist.broadcast(torch.tensor([step], dtype=torch.int64),
                                   src=0)
        for _ in range(steps_after):
            t = torch.full((8,), float(rank + 1))
            dist.all_reduce(t)
            log.append((step, mooncake.get_active_ranks(), t[0].item()))
            step += 1
        q.put((rank, "ok", {"joined": joined, "log": log,
                            "epoch": mooncake.get_epoch()}))
        dist.destroy_process_group()
    except Exception:
        q.put((rank, "error", traceback.format_exc()))


def _launch(world):
    """The launcher's side: a TCPStore master (no waiting for workers), a
    spawn context and the queue the processes report into."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    master = dist.TCPStore("127.0.0.1", port, world, is_master=True,
                           wait_for_workers=False,
                           timeout=timedelta(seconds=60))
    return ctx, port, master, ctx.Queue()


def _run(procs, q, n, timeout=120):
    for p in procs:
        p.start()
    out = {}
    try:
        for _ in range(n):
            rank, kind, val = q.get(timeout=timeout)
            out[rank] = (kind, val)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return out


def test_scale_up_reserved_slot():
    ctx, port, master, q = _launch(3)
    env = {"MOONCAKE_INITIAL_SIZE": "2"}
    procs = [ctx.Process(target=_member, args=(r, 3, port, env, q, 5))
             for r in range(2)]
    procs.append(ctx.Process(target=_member, args=(
        2, 3, port, dict(env, MOONCAKE_JOIN="1"), q, 5)))
    out = _run(procs, q, 3)
    del master
    for r in range(3):
        assert out[r][0] == "ok", out[r][1]
    for r in range(3):
        res = out[r][1]
        assert res["joined"] == [2], res
        assert res["epoch"] == 2, res
        for step, active, v in res["log"]:
            # before the join: 2 ranks (1 + 2); after: 3 ranks (1 + 2 + 3)
            assert v == sum(a + 1 for a in active), (r, step, active, v)
            assert active in ([0, 1], [0, 1, 2]), (r, step, active)
        tail = res["log"][-5:]
        assert all(a == [0, 1, 2] and v == 6.0 for _, a, v in tail), tail
    # the last 5 steps are the same steps on all three ranks
    assert len({tuple(s for s, _, _ in out[r][1]["log"][-5:])
                for r in range(3)}) == 1


def _joiner_alive_slot(port, q):
    try:
        os.environ["MOONCAKE_JOIN"] = "1"
        import torch.distributed as dist
        import mooncake  # noqa: F401
        store = dist.TCPStore("127.0.0.1", port, 2, is_master=False,
                              timeout=timedelta(seconds=30))
        try:
            dist.init_process_group("mooncake", store=store, rank=1,
                                    world_size=2,
                                    timeout=timedelta(seconds=2))
            q.put((9, "error", "admitted into a slot whose process lives"))
        except dist.DistBackendError as e:
            q.put((9, "ok", str(e)))
        store.set("intruder_done", "1")
    except Exception:
        q.put((9, "error", traceback.format_exc()))


def test_join_for_live_slot_times_out():
    ctx, port, master, q = _launch(2)
    # members: no joiner will get in; they run steps until the intruder
    # gave up
    procs = [ctx.Process(target=_member,
                         args=(r, 2, port, {}, q, 0, "intruder_done"))
             for r in range(2)]
    procs.append(ctx.Process(target=_joiner_alive_slot, args=(port, q)))
    out = _run(procs, q, 3)
    del master
    assert out[9][0] == "ok", out[9][1]
    assert "not admitted" in out[9][1], out[9][1]
    for r in range(2):
        assert out[r][0] == "ok", out[r][1]
        res = out[r][1]
        assert res["joined"] == [] and res["epoch"] == 1, res
        assert all(a == [0, 1] and v == 3.0 for _, a, v in res["log"])


def _bad_initial(port, q):
    try:
        os.environ["MOONCAKE_INITIAL_SIZE"] = "7"
        import torch.distributed as dist
        import mooncake  # noqa: F401
        store = dist.TCPStore("127.0.0.1", port, 1, is_master=False,
                              timeout=timedelta(seconds=30))
        try:
            dist.init_process_group("mooncake", store=store, rank=0,
                                    world_size=1)
            q.put((0, "error", "accepted MOONCAKE_INITIAL_SIZE=7 of 1"))
        except Exception as e:
            q.put((0, "ok", str(e)))
    except Exception:
        q.put((0, "error", traceback.format_exc()))


def test_bad_initial_size_is_refused():
    ctx, port, master, q = _launch(1)
    out = _run([ctx.Process(target=_bad_initial, args=(port, q))], q, 1)
    del master
    assert out[0][0] == "ok", out[0][1]
    assert "MOONCAKE_INITIAL_SIZE" in out[0][1], out[0][1]


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
