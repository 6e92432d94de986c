"""Multi-process harness for the torch.distributed backend tests.

Why a harness: starting a Python process that imports torch costs seconds on
a small machine, so the suite keeps one pool of worker processes per world
size for the whole pytest session and runs every case of a test module in a
single pass over that pool ("one spawn per world size, not per case").

Protocol:
  * The pytest process hosts a TCPStore (port 0, so no port race) and starts
    `world_size` workers (`python -c "import mp_harness; ...worker_main()"`).
  * It writes one JSON command per run to every worker's stdin: the module
    file, the case names, and a fresh store prefix.  Each worker imports the
    module, calls dist.init_process_group(backend, store=PrefixStore(...)),
    and runs the cases in order.  Workers answer on their original stdout
    (print() inside cases goes to stderr) with JSON events: "start", "result",
    "end".
  * After every case the ranks exchange their outcome through the TCPStore,
    which does not depend on the backend under test.  If any rank failed (or
    the case is marked fresh_after, e.g. it leaves an operation pending on
    purpose) every rank destroys the process group and creates a new one under
    a new prefix, so one broken case cannot desynchronise the next ones.
  * Hangs: every process group gets a per-operation timeout (op_timeout), the
    outcome exchange waits at most op_timeout + 10 s, faulthandler dumps the
    stacks of a worker stuck in one case, and the parent kills the whole pool
    if no worker reported anything for 2 * op_timeout + 20 s.  Remaining cases
    then fail with the ranks' positions and stderr tails; a later run starts a
    fresh pool.

Cases are plain functions `fn(ctx)` registered with @case; they use the public
torch.distributed API and check results against references computed locally
from deterministic per-rank inputs.
"""

import faulthandler
import importlib.util
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import timedelta

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_WORLD_SIZES = (2, 3, 4)

# ---------------------------------------------------------------------------
# Case registry (used by both the pytest process and the workers)
# ---------------------------------------------------------------------------

_REGISTRY = {}  # module key -> {case name -> Case}


def _module_key(module):
    f = getattr(module, "__file__", None) or module.__name__
    return os.path.splitext(os.path.basename(f))[0]


class Case:
    def __init__(self, fn, world_sizes, skip_on, fresh_after, kills=False):
        self.fn = fn
        self.name = fn.__name__
        self.world_sizes = tuple(world_sizes)
        self.skip_on = dict(skip_on or {})
        self.fresh_after = fresh_after
        self.kills = kills


def case(fn=None, *, world_sizes=DEFAULT_WORLD_SIZES, skip_on=None,
         fresh_after=False, kills=False):
    """Register fn(ctx) as a multi-process case.

    skip_on: {backend name: reason} for backends that lack the feature (the
    backend under development, "mooncake", must never appear here).
    fresh_after: recreate the process group after this case even if it
    passed (the case leaves a timed-out or aborted operation behind).
    kills: the case may end ranks on purpose with ctx.die() (SIGKILL). It
    runs alone on a fresh pool of workers that is discarded afterwards; a
    rank that died through ctx.die() counts as passed, any other exit of a
    rank still fails the case.
    """

    def deco(f):
        key = _module_key(sys.modules[f.__module__])
        reg = _REGISTRY.setdefault(key, {})
        if f.__name__ in reg:
            raise ValueError(f"duplicate case {f.__name__} in {key}")
        reg[f.__name__] = Case(f, world_sizes, skip_on, fresh_after, kills)
        return f

    return deco(fn) if fn is not None else deco


def params(module_name):
    """pytest.param(ws, name) for every registered case of a module."""
    import pytest

    key = _module_key(sys.modules[module_name])
    out = []
    for c in _REGISTRY.get(key, {}).values():
        for ws in c.world_sizes:
            out.append(pytest.param(ws, c.name, id=f"{c.name}-ws{ws}"))
    return out


def get_backend():
    return os.environ.get("MOONCAKE_TEST_BACKEND", "mooncake")


def op_timeout_s():
    return float(os.environ.get("MOONCAKE_TEST_OP_TIMEOUT", "20"))


# ---------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------


class Ctx:
    """What a case sees: its rank, the world size, the backend name, the
    harness' TCPStore (independent of the backend, prefixed per case) and
    the per-operation timeout."""

    def __init__(self, rank, world_size, backend, store, op_timeout,
                 on_die=None):
        self.rank = rank
        self.world_size = world_size
        self.backend = backend
        self.store = store
        self.op_timeout = op_timeout
        self._on_die = on_die

    def die(self):
        """End this worker process at once with SIGKILL (no cleanup, like a
        crash). Only in cases registered with kills=True; callable from any
        thread. The harness records the death as this rank's expected
        outcome first."""
        if self._on_die is None:
            raise RuntimeError("ctx.die() needs @case(kills=True)")
        self._on_die()
        os.kill(os.getpid(), signal.SIGKILL)

    def stop_then_die(self):
        """Stop this worker (SIGSTOP: silent, its sockets and shared memory
        stay open, as with a hung process) until another process sends it
        SIGCONT; then end it as die() does. kills=True cases only."""
        if self._on_die is None:
            raise RuntimeError("ctx.stop_then_die() needs @case(kills=True)")
        self._on_die()
        os.kill(os.getpid(), signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGKILL)

    def store_barrier(self, name, timeout=None):
        """Synchronise through the store (not through the backend)."""
        t = timedelta(seconds=timeout or self.op_timeout)
        self.store.set(f"sb/{name}/{self.rank}", "1")
        self.store.wait([f"sb/{name}/{r}" for r in range(self.world_size)], t)


def _emit(chan, **ev):
    chan.write(json.dumps(ev) + "\n")
    chan.flush()


def _load_module(path):
    key = os.path.splitext(os.path.basename(path))[0]
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[key] = mod
    spec.loader.exec_module(mod)
    return mod


def worker_main():
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world-size", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--backend", required=True)
    args = ap.parse_args()

    # Protocol channel = the original stdout; everything printed by torch or
    # by the cases goes to stderr (a log file the parent shows on failure).
    chan = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    if args.backend == "mooncake":
        import mooncake  # noqa: F401  registers the backend

    rank, ws = args.rank, args.world_size
    store = dist.TCPStore("127.0.0.1", args.port, is_master=False,
                          timeout=timedelta(seconds=60))
    _emit(chan, event="ready", rank=rank, pid=os.getpid())

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("cmd") == "exit":
            break
        _run_cases(chan, dist, store, rank, ws, args.backend, cmd)
    chan.close()


def _init_pg(dist, store, prefix, gen, rank, ws, backend, op_timeout):
    pg_store = dist.PrefixStore(f"{prefix}pg{gen}/", store)
    dist.init_process_group(backend, store=pg_store, rank=rank, world_size=ws,
                            timeout=timedelta(seconds=op_timeout))


def _destroy_pg(dist):
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        traceback.print_exc()


def _run_cases(chan, dist, store, rank, ws, backend, cmd):
    import pytest

    prefix = cmd["prefix"]
    op_timeout = float(cmd["op_timeout"])
    gen = 0
    try:
        mod = _load_module(cmd["path"])
        reg = _REGISTRY[_module_key(mod)]
        _init_pg(dist, store, prefix, gen, rank, ws, backend, op_timeout)
    except BaseException:
        _emit(chan, event="fatal", error="setup failed:\n" +
              traceback.format_exc())
        _destroy_pg(dist)
        return

    for name in cmd["cases"]:
        c = reg[name]
        _emit(chan, event="start", case=name)
        faulthandler.dump_traceback_later(2 * op_timeout + 12, exit=False)
        cstore = dist.PrefixStore(f"{prefix}case/{name}/", store)
        skey = f"{prefix}status/{name}/"

        def on_die(name=name, skey=skey):
            # Peers learn the outcome through the store, the parent through
            # the channel; then the caller kills this process.
            store.set(skey + str(rank), "died")
            _emit(chan, event="dying", case=name)

        ctx = Ctx(rank, ws, backend, cstore, op_timeout,
                  on_die if c.kills else None)
        t0 = time.monotonic()
        try:
            c.fn(ctx)
            outcome, msg = "ok", ""
        except pytest.skip.Exception as e:
            outcome, msg = "skip", str(e)
        except BaseException:
            outcome, msg = "fail", traceback.format_exc()
        faulthandler.cancel_dump_traceback_later()
        elapsed = time.monotonic() - t0
        _emit(chan, event="result", case=name, outcome=outcome, msg=msg,
              elapsed=round(elapsed, 3))

        # Outcome exchange through the store: decides whether the process
        # group must be recreated before the next case.
        store.set(skey + str(rank), outcome)
        try:
            store.wait([skey + str(r) for r in range(ws)],
                       timedelta(seconds=op_timeout + 10))
            outcomes = [store.get(skey + str(r)).decode() for r in range(ws)]
        except Exception:
            _emit(chan, event="fatal",
                  error=f"rank {rank}: peers did not finish case {name} "
                        f"within {op_timeout + 10:.0f}s of this rank")
            _destroy_pg(dist)
            return
        if "died" in outcomes:
            # A rank is gone: the group cannot be recreated at this size.
            # Kill cases run alone, so this ends the run.
            _destroy_pg(dist)
            _emit(chan, event="end")
            return
        if c.fresh_after or "fail" in outcomes:
            t1 = time.monotonic()
            _destroy_pg(dist)
            gen += 1
            print(f"[harness] rank {rank}: destroyed the process group "
                  f"after {name} in {time.monotonic() - t1:.2f}s",
                  file=sys.stderr)
            try:
                _init_pg(dist, store, prefix, gen, rank, ws, backend,
                         op_timeout)
            except BaseException:
                _emit(chan, event="fatal",
                      error="re-init after case failed:\n" +
                      traceback.format_exc())
                _destroy_pg(dist)
                return
    _destroy_pg(dist)
    _emit(chan, event="end")


# ---------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------


class Pool:
    """world_size long-lived worker processes sharing one TCPStore."""

    def __init__(self, world_size, backend, logdir):
        import torch.distributed as dist

        self.ws = world_size
        self.backend = backend
        self.runs = 0
        self.store = dist.TCPStore("127.0.0.1", 0, is_master=True,
                                   wait_for_workers=False,
                                   timeout=timedelta(seconds=60))
        self.port = self.store.port
        env = dict(os.environ)
        env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONFAULTHANDLER"] = "1"
        self.logs = []
        self.procs = []
        self.bufs = []
        for r in range(world_size):
            log = os.path.join(logdir, f"ws{world_size}-{id(self)}-rank{r}.log")
            self.logs.append(log)
            with open(log, "wb") as errf:
                p = subprocess.Popen(
                    [sys.executable, "-u", "-c",
                     "import mp_harness; mp_harness.worker_main()",
                     "--rank", str(r), "--world-size", str(world_size),
                     "--port", str(self.port), "--backend", backend],
                    cwd=HERE, env=env, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=errf,
                    start_new_session=True)
            os.set_blocking(p.stdout.fileno(), False)
            self.procs.append(p)
            self.bufs.append(b"")
        self.dead = False
        self.lost = False  # a rank died on purpose (ctx.die)

    def alive(self):
        return (not self.dead and not self.lost
                and all(p.poll() is None for p in self.procs))

    def tail(self, r, n=4000):
        try:
            with open(self.logs[r], "rb") as f:
                data = f.read()
            return data[-n:].decode(errors="replace")
        except OSError as e:
            return f"<no log: {e}>"

    def kill(self):
        self.dead = True
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            for f in (p.stdin, p.stdout):
                try:
                    f.close()
                except Exception:
                    pass

    def request_exit(self):
        for p in self.procs:
            try:
                p.stdin.write(b'{"cmd": "exit"}\n')
                p.stdin.flush()
            except Exception:
                pass

    def close(self):
        if self.dead:
            return
        self.request_exit()
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def _events(self, sel, timeout):
        """Yield (rank, event) as they arrive; (None, None) on idle timeout."""
        out = []
        for key, _ in sel.select(timeout):
            r = key.data
            try:
                chunk = os.read(key.fileobj.fileno(), 65536)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(key.fileobj)
                out.append((r, {"event": "eof"}))
                continue
            self.bufs[r] += chunk
            while b"\n" in self.bufs[r]:
                line, self.bufs[r] = self.bufs[r].split(b"\n", 1)
                try:
                    out.append((r, json.loads(line)))
                except ValueError:
                    out.append((r, {"event": "junk",
                                    "line": line.decode(errors="replace")}))
        return out

    def run(self, path, cases, op_timeout):
        """Run cases of the module at path on every rank.

        Returns {case: {rank: (outcome, msg, elapsed)}} plus a list of
        problems (strings) that apply to cases without a result."""
        self.runs += 1
        prefix = f"run{self.runs}/"
        cmd = json.dumps({"path": path, "cases": cases, "prefix": prefix,
                          "op_timeout": op_timeout}) + "\n"
        for p in self.procs:
            p.stdin.write(cmd.encode())
            p.stdin.flush()
        sel = selectors.DefaultSelector()
        for r, p in enumerate(self.procs):
            sel.register(p.stdout, selectors.EVENT_READ, r)
        results = {c: {} for c in cases}
        current = {r: "<setup>" for r in range(self.ws)}
        ended = set()
        dying = {}  # rank -> case, announced by ctx.die()
        t_start = {}
        problems = []
        idle_limit = 2 * op_timeout + 20
        last = time.monotonic()
        while len(ended) < self.ws:
            evs = self._events(sel, 1.0)
            now = time.monotonic()
            if evs:
                last = now
            for r, ev in evs:
                kind = ev.get("event")
                if kind == "ready":
                    continue
                if kind == "start":
                    current[r] = ev["case"]
                    t_start[r] = now
                elif kind == "dying":
                    dying[r] = ev["case"]
                    results[ev["case"]][r] = (
                        "died", "", round(now - t_start.get(r, now), 3))
                elif kind == "result":
                    results[ev["case"]][r] = (ev["outcome"], ev["msg"],
                                              ev["elapsed"])
                    current[r] = "<between cases>"
                elif kind == "end":
                    ended.add(r)
                elif kind == "fatal":
                    problems.append(f"rank {r}: {ev['error']}")
                    ended.add(r)
                elif kind == "eof":
                    rc = self.procs[r].wait(timeout=5)
                    ended.add(r)
                    if r in dying and rc == -signal.SIGKILL:
                        self.lost = True  # a rank is gone: no reuse
                        continue
                    if r in dying:
                        results[dying[r]].pop(r, None)
                    problems.append(
                        f"rank {r} exited (rc={rc}) while in case "
                        f"{current[r]}; stderr tail:\n{self.tail(r)}")
                elif kind == "junk":
                    problems.append(f"rank {r} wrote junk: {ev['line']}")
            if len(ended) < self.ws and now - last > idle_limit:
                where = ", ".join(f"rank {r} in {current[r]}"
                                  for r in range(self.ws) if r not in ended)
                msg = (f"no progress for {idle_limit:.0f}s ({where}); pool "
                       f"killed.")
                self.kill()
                for r in range(self.ws):
                    msg += f"\n--- rank {r} stderr tail ---\n{self.tail(r)}"
                problems.append(msg)
                break
        sel.close()
        if problems and not self.dead:
            # A rank gave up on the run (fatal) or died: the survivors may
            # be stuck in a collective; do not reuse this pool.
            self.kill()
        return results, problems


class Runner:
    """Session object: pools per world size, cached results per module."""

    def __init__(self, backend, selected):
        self.backend = backend
        self.selected = selected  # {(module key, ws): set(names)} or {}
        self.pools = {}
        self.cache = {}
        self.logdir = tempfile.mkdtemp(prefix="mc-pytest-")
        self.op_timeout = op_timeout_s()

    def _pool(self, ws):
        p = self.pools.get(ws)
        if p is None or not p.alive():
            if p is not None:
                p.kill()
            p = Pool(ws, self.backend, self.logdir)
            self.pools[ws] = p
        return p

    def close(self):
        for p in self.pools.values():  # let all pools exit in parallel
            if not p.dead:
                p.request_exit()
        for p in self.pools.values():
            p.close()
        self.pools.clear()
        import shutil

        if not os.environ.get("MOONCAKE_TEST_KEEP_LOGS"):
            shutil.rmtree(self.logdir, ignore_errors=True)
        else:
            print(f"worker logs kept in {self.logdir}", file=sys.stderr)

    def _results(self, module, ws):
        key = (_module_key(module), ws)
        if key in self.cache:
            return self.cache[key]
        reg = _REGISTRY[key[0]]
        want = self.selected.get(key)
        names = [n for n, c in reg.items()
                 if ws in c.world_sizes and self.backend not in c.skip_on
                 and (not want or n in want)]
        shared = [n for n in names if not reg[n].kills]
        t0 = time.monotonic()
        res, problems = {}, {}  # problems: {case or None (all): [str]}
        if shared:
            r, p = self._pool(ws).run(module.__file__, shared,
                                      self.op_timeout)
            res.update(r)
            problems[None] = p
        for n in names:
            if not reg[n].kills:
                continue
            # A case that kills ranks gets a pool of its own, thrown away
            # afterwards (the dead ranks cannot be replaced in place).
            pool = Pool(ws, self.backend, self.logdir)
            try:
                r, p = pool.run(module.__file__, [n], self.op_timeout)
            finally:
                pool.close()
            res.update(r)
            problems[n] = p
        self.cache[key] = (res, problems, time.monotonic() - t0)
        tfile = os.environ.get("MOONCAKE_TEST_TIMINGS")
        if tfile:  # per-case wall time (slowest rank), for tuning the suite
            with open(tfile, "a") as f:
                f.write(f"# {key[0]} ws={ws}: {self.cache[key][2]:.2f}s\n")
                for n, per in res.items():
                    el = max((e for (_, _, e) in per.values()), default=-1)
                    f.write(f"{el:8.3f} {key[0]} ws={ws} {n}\n")
        return self.cache[key]

    def check(self, module_name, ws, name):
        import pytest

        module = sys.modules[module_name]
        c = _REGISTRY[_module_key(module)][name]
        if self.backend in c.skip_on:
            pytest.skip(f"{self.backend}: {c.skip_on[self.backend]}")
        res, all_problems, _ = self._results(module, ws)
        problems = all_problems.get(None, []) + all_problems.get(name, [])
        per_rank = res.get(name, {})
        if len(per_rank) < ws:
            missing = sorted(set(range(ws)) - set(per_rank))
            fails = [f"rank {r}: {m}" for r, (o, m, _) in
                     sorted(per_rank.items()) if o == "fail"]
            pytest.fail(
                f"case {name} (world size {ws}, backend {self.backend}): "
                f"no result from rank(s) {missing}.\n" +
                "\n".join(fails + problems), pytrace=False)
        fails = [(r, m, e) for r, (o, m, e) in sorted(per_rank.items())
                 if o == "fail"]
        if fails:
            text = "\n".join(f"--- rank {r} (after {e:.2f}s) ---\n{m}"
                             for r, m, e in fails)
            pytest.fail(f"case {name} failed on {len(fails)}/{ws} rank(s) "
                        f"(backend {self.backend}):\n{text}", pytrace=False)
        skips = [m for (o, m, _) in per_rank.values() if o == "skip"]
        if skips:
            pytest.skip(skips[0])
