#!/usr/bin/env python3
"""Run PyTorch's own distributed suite against mooncake and gloo.

The suite is ``torch/testing/_internal/distributed/distributed_test.py``
(``DistributedTest._DistTestBase``), driven the way PyTorch's
``test/distributed/test_distributed_spawn.py`` drives it: a
``TestDistBackend`` subclass whose ``setUp`` starts WORLD_SIZE rank
processes per test, each of which calls ``init_process_group(BACKEND,
file://...)`` and runs one test method.

Usage (from the repository root, with the venv that has torch and mooncake):

    python tests/python/run_torch_suite.py                 # gloo + mooncake
    python tests/python/run_torch_suite.py --backends gloo # harness check only
    python tests/python/run_torch_suite.py -k all_reduce -k broadcast

Two layers:

* the *driver* (default mode) starts, per backend and phase, up to ``--jobs``
  worker processes (``--worker``), each running a shard of the test list,
  merges their JSON, writes ``--out`` and prints summary tables plus the
  list of tests that pass on gloo but not on the other backend.  Phases:
  1. every test at ``--world-size`` (default 2);
  2. the tests skipped there for a too-small world size, at
     ``--extra-world-sizes`` (default 4,8), keyed ``name[ws=N]``;
  3. "as-gloo": tests gloo passes that the suite skips for any backend not
     named gloo (``BACKEND != "gloo"`` decorators: get_future, DDP no_sync,
     batch_isend_irecv tags, coalesced all_reduce...), rerun with the suite
     seeing BACKEND=gloo while every "gloo" process group it creates is made
     with the real backend, keyed ``name[as-gloo]``;
  4. "as-mpi": the CPU all_to_all tests the suite runs for MPI only, on every
     backend the same way (informational), keyed ``name[as-mpi]``.
  Exit status 1 when a test passes on gloo but not on the other backend and
  is not in NOT_APPLICABLE, or when a worker crashed; 0 otherwise.
* a *worker* sets BACKEND / WORLD_SIZE before distributed_test.py is imported
  (the module reads them, and evaluates its skip decorators, at import time),
  adds the backend to DistTestCases' feature sets, imports ``mooncake`` so
  that the backend is registered, and runs its tests with a collecting
  unittest result.

Why ranks are forked rather than spawned by default: a spawned rank
re-imports torch (3-4 s idle, ~15 s under load here) for each of ~280
tests and backends; a rank
forked from the worker, which has already imported torch and mooncake but
never initialised CUDA or a process group, starts in milliseconds.
``--start-method spawn`` restores upstream's behaviour (needed where CUDA is
initialised in the parent, i.e. on a GPU machine).  With spawn the rank
processes import this file as ``__mp_main__``; the module-level set-up below
is what makes them register mooncake and see the same feature sets.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import unittest

_WORKER_ENV = "MOONCAKE_TORCH_SUITE_WORKER"

# Feature sets of DistTestCases.backend_feature that mooncake claims:
#   plugin   - require_backend_is_available() accepts a third-party backend
#   subgroup - new_group() subgroups
#   ddp      - DistributedDataParallel (needs Work::getFuture)
#   gpu/cuda - CUDA tensors (staged through host memory); on a machine
#              without GPUs the tests gated by these still skip through
#              skip_if_lt_x_gpu / skip_if_no_gpu, but several CPU tests
#              (e.g. test_all_gather_object_*) are gated by "gpu" too.
DEFAULT_FEATURES = ("plugin", "subgroup", "ddp", "gpu", "cuda")

# --------------------------------------------------------------------------
# Module-level set-up, run in workers and in spawned rank processes only
# (never in the driver, which must not import torch's test machinery).
# --------------------------------------------------------------------------
if os.environ.get(_WORKER_ENV) == "1":
    _BACKEND = os.environ["BACKEND"]
    from torch.testing._internal import common_distributed as _cd

    # Must happen before distributed_test is imported: its decorators read
    # these sets when the class body executes.
    if _BACKEND not in ("gloo", "nccl", "mpi", "ucc"):
        for _feat in os.environ.get("MOONCAKE_SUITE_FEATURES", ",".join(DEFAULT_FEATURES)).split(","):
            if _feat:
                _cd.DistTestCases.backend_feature.setdefault(_feat, set()).add(_BACKEND)
    if _BACKEND == "mooncake":
        import mooncake  # noqa: F401  registers backend "mooncake" (cpu, cuda)
    elif _BACKEND == "glooplugin":
        # Harness self-check: gloo registered as a third-party backend.  It
        # must pass what gloo passes, except what the suite or torch tie to
        # the name "gloo"; that isolates harness effects from backend bugs.
        import torch.distributed as _dist

        def _glooplugin(store, rank, size, timeout):
            return _dist.ProcessGroupGloo(store, rank, size, timeout)

        _dist.Backend.register_backend("glooplugin", _glooplugin, devices=["cpu", "cuda"])
    # "as-gloo" mode, for the tests the suite gates on `BACKEND != "gloo"`
    # (batch_isend_irecv, get_future, DDP no_sync, coalesced all_reduce...):
    # the suite's decorators and test bodies see BACKEND=gloo, so the tests
    # are collected and take their gloo (CPU) code paths, but every process
    # group they create for "gloo" is created with the real backend.
    _DECORATE_AS = os.environ.get("MOONCAKE_SUITE_DECORATE_AS", "")
    if _DECORATE_AS:
        os.environ["BACKEND"] = _DECORATE_AS

    # Per-test timeout: MultiProcessTestCase._join_processes looks the
    # function up in common_distributed's globals at call time.
    _TEST_TIMEOUT = int(os.environ.get("MOONCAKE_SUITE_TIMEOUT", "60"))
    _cd.get_timeout = lambda test_id: _TEST_TIMEOUT

    import torch
    from torch.testing._internal.distributed.distributed_test import (
        DistributedTest,
        TestDistBackend,
    )

    if _DECORATE_AS:
        import torch.distributed as _dist
        import torch.distributed.distributed_c10d as _c10d

        os.environ["BACKEND"] = _BACKEND  # read at run time by a few helpers

        def _redirected(fn, pos):
            def wrapper(*a, **kw):
                a = list(a)
                if len(a) > pos and str(a[pos]).lower() == _DECORATE_AS:
                    a[pos] = _BACKEND
                if str(kw.get("backend", "")).lower() == _DECORATE_AS:
                    kw["backend"] = _BACKEND
                out = fn(*a, **kw)
                if fn.__name__ == "init_process_group" and _dist.get_backend() != _BACKEND:
                    raise RuntimeError(f"as-{_DECORATE_AS}: default group is {_dist.get_backend()}")
                return out

            wrapper.__wrapped__ = fn
            return wrapper

        # positional index of `backend` in each signature
        for _fname, _pos in (("init_process_group", 0), ("new_group", 2)):
            _w = _redirected(getattr(_c10d, _fname), _pos)
            setattr(_c10d, _fname, _w)  # internal callers (new_subgroups...)
            setattr(_dist, _fname, _w)  # the suite's dist.X calls

    class TestDistBackendSuite(TestDistBackend, DistributedTest._DistTestBase):
        """Same shape as upstream's TestDistBackendWithSpawn."""

        def setUp(self):
            super().setUp()
            method = os.environ.get("MOONCAKE_SUITE_START", "fork")
            self._start_processes(torch.multiprocessing.get_context(method).Process)
            torch.backends.cudnn.flags(enabled=True, allow_tf32=False).__enter__()

        def tearDown(self):
            super().tearDown()
            # MultiProcessTestCase leaves the file:// store of every test in
            # /tmp; nothing uses it once the ranks are gone.
            try:
                os.unlink(self.file_name)
            except OSError:
                pass


# --------------------------------------------------------------------------
# Worker
# --------------------------------------------------------------------------
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure)\b.*|[\w.]+Error)$")


def _first_error_line(text):
    """The exception line that explains a failure, shortened to one line.

    For a rank failure the parent raises RuntimeError whose message embeds
    each failing rank's traceback; the useful line is the last line of the
    first embedded traceback (the rank's own exception), not the parent's.
    """
    if not text:
        return ""
    if "terminated or timed out after" in text:
        m = re.search(r"Process \d+ terminated or timed out after [\d.]+ seconds", text)
        return m.group(0) if m else "timed out"
    lines = text.splitlines()
    tb_starts = [i for i, l in enumerate(lines) if l.startswith("Traceback (most recent call last)")]
    # Embedded rank traceback: after "exited with error code 10 and exception:".
    marker = next((i for i, l in enumerate(lines) if "and exception:" in l), None)
    if marker is not None:
        start = next((i for i in tb_starts if i > marker), marker)
        end = next((i for i, l in enumerate(lines) if i > start and "exited with error code" in l), len(lines))
        block = lines[start:end]
    else:
        block = lines
    cand = [l.strip() for l in block if _EXC_LINE.match(l.strip())]
    if not cand:
        cand = [l.strip() for l in block if l.strip()]
    line = cand[-1] if cand else ""
    # Exceptions from C++ carry a multi-line message; when the exception line
    # is only a type, take the next non-empty line as well.
    idx = None
    for i in range(len(block) - 1, -1, -1):
        if block[i].strip() == line:
            idx = i
            break
    if idx is not None and line.endswith(":"):
        nxt = next((l.strip() for l in block[idx + 1:] if l.strip()), "")
        line = f"{line} {nxt}"
    return line[:400]


class _CollectingResult(unittest.TestResult):
    def __init__(self, sink, stream):
        super().__init__()
        self.sink = sink
        self.stream = stream
        self._t0 = 0.0

    def _name(self, test):
        return test.id().split(".")[-1]

    def startTest(self, test):
        super().startTest(test)
        self._t0 = time.time()
        self.stream.write(f"[run ] {self._name(test)}\n")
        self.stream.flush()

    def _put(self, test, status, err="", detail=""):
        name = self._name(test)
        rec = {"status": status, "seconds": round(time.time() - self._t0, 2)}
        if err:
            rec["error"] = err
        if detail:
            rec["detail"] = detail[-6000:]
        self.sink[name] = rec
        self.stream.write(f"[{status:<7}] {name} ({rec['seconds']}s) {err}\n")
        self.stream.flush()

    def addSuccess(self, test):
        super().addSuccess(test)
        self._put(test, "passed")

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._put(test, "skipped", reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._put(test, "passed", "expected failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._put(test, "failed", "unexpected success")

    def _classify(self, test, err, default):
        text = "".join(traceback.format_exception(*err))
        line = _first_error_line(str(err[1]) if err[0] is RuntimeError else text)
        if "terminated or timed out after" in text:
            status = "timeout"
        elif line.startswith("AssertionError") or err[0] is AssertionError:
            status = "failed"
        else:
            status = default
        self._put(test, status, line, text)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._classify(test, err, "failed")

    def addError(self, test, err):
        super().addError(test, err)
        self._classify(test, err, "error")


def _all_test_names():
    return sorted(n for n in dir(TestDistBackendSuite) if n.startswith("test"))


def worker_main(args):
    names = _all_test_names()
    if args.list:
        print("\n".join(names))
        return 0
    wanted = args.tests.split(",") if args.tests else names
    missing = [n for n in wanted if n not in names]
    if missing:
        print(f"unknown tests: {missing}", file=sys.stderr)
        return 2
    results = {}
    res = _CollectingResult(results, sys.stdout)
    suite = unittest.TestSuite(TestDistBackendSuite(n) for n in wanted)
    suite.run(res)
    with open(args.result, "w") as f:
        json.dump(results, f)
    return 0


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------
# Tests that pass on gloo but do not apply to a third-party backend, because
# they test a gloo-only API or gloo's own behaviour rather than the c10d
# contract.  They are reported, but do not make the run fail.  Keep this in
# sync with docs/compatibility.md.
NOT_APPLICABLE = {
    "test_ddp_logging_data_cpu": "DDP's logger reads C++ ProcessGroup::getBackendName(), which is "
    "'custom' for every backend added with Backend.register_backend (gloo registered as a plugin fails too)",
    "test_monitored_barrier_gloo": "dist.monitored_barrier() refuses every backend but gloo",
    "test_monitored_barrier_gloo_rank_0_timeout": "dist.monitored_barrier() refuses every backend but gloo",
    "test_monitored_barrier_gloo_subgroup": "dist.monitored_barrier() refuses every backend but gloo",
    "test_monitored_barrier_allreduce_hang": "dist.monitored_barrier() refuses every backend but gloo",
    "test_monitored_barrier_allreduce_hang_wait_all_ranks": "dist.monitored_barrier() refuses every backend but gloo",
    "test_monitored_barrier_failure_order": "dist.monitored_barrier() refuses every backend but gloo",
    "test_monitored_barrier_wait_all_ranks": "dist.monitored_barrier() refuses every backend but gloo",
}


def _base_name(key):
    return key.split("[", 1)[0]


def _worker_env(backend, ws, args, decorate_as=""):
    env = dict(os.environ)
    env.update(
        {
            _WORKER_ENV: "1",
            "BACKEND": backend,
            "WORLD_SIZE": str(ws),
            "MOONCAKE_SUITE_TIMEOUT": str(args.timeout),
            "MOONCAKE_SUITE_START": args.start_method,
            "MOONCAKE_SUITE_FEATURES": args.features,
            "MOONCAKE_SUITE_DECORATE_AS": decorate_as,
            # Keep each rank single-threaded: the test tensors are tiny and
            # this machine has few cores shared by all ranks and workers.
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _list_tests(backend, args):
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", "--list"],
        env=_worker_env(backend, args.world_size, args),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"listing tests for {backend} failed:\n{out.stderr[-3000:]}")
    return [l for l in out.stdout.split() if l.startswith("test")]


def _select(names, args):
    sel = names
    if args.k:
        sel = [n for n in sel if any(re.search(p, n) for p in args.k)]
    if args.exclude:
        sel = [n for n in sel if not any(re.search(p, n) for p in args.exclude)]
    return sel


def run_phase(backend, names, ws, suffix, args, workdir, decorate_as=""):
    """Run `names` at world size `ws` in --jobs workers; results keyed name+suffix."""
    procs = []
    # Round-robin keeps the slow DDP tests (alphabetically clustered) spread.
    # A worker costs a torch import (seconds here), so small phases get one.
    jobs = max(1, min(args.jobs, len(names) // 10))
    shards = [names[i::jobs] for i in range(jobs)]
    tag = f"{backend}-ws{ws}{'-as-' + decorate_as if decorate_as else ''}"
    for i, shard in enumerate(shards):
        res = os.path.join(workdir, f"{tag}-{i}.json")
        log = open(os.path.join(workdir, f"{tag}-{i}.log"), "w")
        p = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", "--result", res, "--tests", ",".join(shard)],
            env=_worker_env(backend, ws, args, decorate_as),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append((p, res, log, shard))
    merged, crashed = {}, []
    deadline = time.time() + args.budget
    for p, res, log, shard in procs:
        try:
            p.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()
        data = {}
        if os.path.exists(res):
            with open(res) as f:
                data = json.load(f)
        else:
            crashed.append({"log": log.name, "rc": p.returncode})
        for n in shard:
            rec = data.get(n) or {
                "status": "error",
                "error": f"worker exited {p.returncode} before the test finished; see {log.name}",
            }
            rec["world_size"] = ws
            if decorate_as:
                rec["decorated_as"] = decorate_as
            merged[n + suffix] = rec
    return merged, crashed


def _counts(res):
    c = {"passed": 0, "failed": 0, "error": 0, "timeout": 0, "skipped": 0}
    for r in res.values():
        c[r["status"]] = c.get(r["status"], 0) + 1
    c["total"] = len(res)
    return c


_WS_SKIP = re.compile(r"world size", re.I)
_MPI_ONLY = re.compile(r"^Only MPI supports (CPU )?all_to_all")


def driver_main(args):
    backends = [b for b in args.backends.split(",") if b]
    if args.start_method not in ("fork", "spawn", "forkserver"):
        raise SystemExit("--start-method must be fork, spawn or forkserver")
    extra_ws = [int(w) for w in args.extra_world_sizes.split(",") if w and int(w) != args.world_size]

    # One test list for every backend (the suite defines the same methods
    # whatever BACKEND is; only its skip decorators differ).
    names = _select(_list_tests(backends[0], args), args)
    if not names:
        raise SystemExit("no tests selected")

    workdir = args.logdir or tempfile.mkdtemp(prefix="torch-suite-")
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    results = {b: {} for b in backends}
    timing = {b: 0.0 for b in backends}
    crashes = {b: [] for b in backends}

    def phase(b, tests, ws, suffix, decorate_as=""):
        if not tests:
            return
        tb = time.time()
        r, c = run_phase(b, tests, ws, suffix, args, workdir, decorate_as)
        results[b].update(r)
        crashes[b].extend(c)
        timing[b] = round(timing[b] + time.time() - tb, 1)

    # Backends run one after the other: running them at once would halve
    # the CPU each gets and let the timeouts, not the backends, decide.
    # 1. every selected test at the base world size
    for b in backends:
        phase(b, names, args.world_size, "")
    # 2. tests the base world size was too small for, at the extra sizes
    small = sorted({n for b in backends for n in names
                    if results[b][n]["status"] == "skipped" and _WS_SKIP.search(results[b][n].get("error", ""))})
    for ws in extra_ws:
        for b in backends:
            phase(b, small, ws, f"[ws={ws}]")
    # 3. tests the suite gates to gloo by name, run on the other backend
    if "gloo" in backends and not args.no_as_gloo:
        for b in backends:
            if b == "gloo":
                continue
            by_ws = {}
            for key, g in results["gloo"].items():
                o = results[b].get(key)
                if g["status"] == "passed" and o and o["status"] == "skipped":
                    by_ws.setdefault(g["world_size"], []).append(key)
            for ws, keys in sorted(by_ws.items()):
                base = sorted({_base_name(k) for k in keys})
                sfx = "" if ws == args.world_size else f"[ws={ws}]"
                phase(b, base, ws, sfx + "[as-gloo]", decorate_as="gloo")

    # 4. beyond gloo: CPU all_to_all tests the suite runs for MPI only; gloo
    # and the plugin both implement all_to_all, so run them as-mpi on every
    # backend (informational: gloo does not pass them in the plain suite).
    if not args.no_as_gloo:
        mpi_only = sorted(n for n in names
                          if _MPI_ONLY.search(results[backends[0]][n].get("error", "")))
        for b in backends:
            phase(b, mpi_only, args.world_size, "[as-mpi]", decorate_as="mpi")
        small_mpi = sorted({n for b in backends for n in mpi_only
                            if _WS_SKIP.search(results[b][n + "[as-mpi]"].get("error", ""))})
        for ws in extra_ws:
            for b in backends:
                phase(b, small_mpi, ws, f"[ws={ws}][as-mpi]", decorate_as="mpi")

    # Verdict per test that passes on gloo: the other backend's own result,
    # or, where the suite skipped it there, the as-gloo rerun's result.
    gaps, gated = [], []
    if "gloo" in backends:
        for b in backends:
            if b == "gloo":
                continue
            for key, g in sorted(results["gloo"].items()):
                if g["status"] != "passed":
                    continue
                o = results[b].get(key, {})
                via = key
                if o.get("status") == "skipped" and key + "[as-gloo]" in results[b]:
                    gated.append(key)
                    via = key + "[as-gloo]"
                    o = results[b][via]
                if o.get("status") != "passed":
                    gaps.append({
                        "test": key,
                        "backend": b,
                        "result_key": via,
                        "status": o.get("status", "missing"),
                        "error": o.get("error", ""),
                        "not_applicable": NOT_APPLICABLE.get(_base_name(key), ""),
                    })

    summary = {b: _counts({k: v for k, v in results[b].items() if "[" not in k}) for b in backends}
    summary_all = {b: _counts(results[b]) for b in backends}
    blocking = [g for g in gaps if not g["not_applicable"]]
    out = {
        "suite": "torch.testing._internal.distributed.distributed_test.DistributedTest._DistTestBase",
        "torch": _torch_version(),
        "world_size": args.world_size,
        "extra_world_sizes": extra_ws,
        "per_test_timeout_s": args.timeout,
        "start_method": args.start_method,
        "features_for_plugin": args.features.split(","),
        "selected": len(names),
        "filters": {"k": args.k or [], "exclude": args.exclude or []},
        "seconds": timing,
        "summary_base_world_size": summary,
        "summary_all_runs": summary_all,
        "gloo_gated_rerun": gated,
        "beyond_gloo_as_mpi": {b: {k: v["status"] for k, v in results[b].items() if "[as-mpi]" in k}
                               for b in backends},
        "gloo_passes_other_does_not": gaps,
        "blocking": blocking,
        "worker_crashes": {b: crashes[b] for b in backends if crashes[b]},
        "logs": workdir,
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)

    cols = ["passed", "failed", "error", "timeout", "skipped", "total"]

    def table(title, summ):
        print(title)
        print(f"  {'backend':<10}" + "".join(f"{c:>9}" for c in cols))
        for b in backends:
            print(f"  {b:<10}" + "".join(f"{summ[b].get(c, 0):>9}" for c in cols))

    print(f"\nPyTorch distributed suite ({out['torch']}), {len(names)} tests, "
          f"timeout {args.timeout}s/test, ranks by {args.start_method}, {round(time.time() - t0)}s total "
          f"({', '.join(f'{b} {timing[b]}s' for b in backends)})")
    table(f"WORLD_SIZE={args.world_size}, suite's own skips:", summary)
    table(f"all runs (+ world sizes {extra_ws} for {len(small)} world-size-skipped tests"
          f"{', + as-gloo reruns' if gated else ''}):", summary_all)
    if gated:
        print(f"\n{len(gated)} gloo-passing test(s) the suite skips for non-gloo backends were rerun as-gloo.")
    am = out["beyond_gloo_as_mpi"]
    if any(am.values()):
        print("\nCPU all_to_all tests the suite runs for MPI only, run as-mpi (passed/total): "
              + ", ".join(f"{b} {sum(v == 'passed' for v in am[b].values())}/{len(am[b])}" for b in backends))
    if gaps:
        print(f"\n{len(gaps)} test(s) pass on gloo but not on the other backend "
              f"({len(blocking)} not marked not-applicable):")
        for g in gaps:
            na = " [n/a]" if g["not_applicable"] else ""
            print(f"  {g['backend']:<9} {g['status']:<8} {g['result_key']}{na}: {g['error']}")
    for b in backends:
        for c in crashes[b]:
            print(f"worker crash: {b} rc={c['rc']} log={c['log']}")
    print(f"\nresults: {args.out}\nlogs:    {workdir}")
    return 1 if blocking or any(crashes.values()) else 0


def _torch_version():
    try:
        out = subprocess.run([sys.executable, "-c", "import torch;print(torch.__version__)"],
                             capture_output=True, text=True, timeout=120)
        return out.stdout.strip()
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="gloo,mooncake", help="comma list (default gloo,mooncake)")
    ap.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", "2")))
    ap.add_argument("--extra-world-sizes", default="4,8",
                    help="rerun tests skipped for a too-small world size at these sizes (default 4,8; '' = none)")
    ap.add_argument("--timeout", type=int, default=60, help="per-test timeout in seconds (default 60)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes per backend (default 2)")
    ap.add_argument("--budget", type=int, default=600, help="wall-clock seconds per phase before workers are killed")
    ap.add_argument("--start-method", default="fork", help="how rank processes start: fork (default) or spawn")
    ap.add_argument("--features", default=",".join(DEFAULT_FEATURES),
                    help="DistTestCases.backend_feature sets the plugin backend joins")
    ap.add_argument("--no-as-gloo", action="store_true",
                    help="do not rerun the tests the suite gates to gloo on the other backend")
    ap.add_argument("-k", action="append", help="regex; run only matching tests (repeatable)")
    ap.add_argument("--exclude", action="append", help="regex; skip matching tests (repeatable)")
    ap.add_argument("--out", default="build/torch-suite/results.json")
    ap.add_argument("--logdir", default=None)
    # worker-only
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--list", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tests", default="", help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        if os.environ.get(_WORKER_ENV) != "1":
            raise SystemExit("--worker is internal; run without it")
        return worker_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
