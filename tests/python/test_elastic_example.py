"""examples/elastic_training.py end to end: a real SIGKILL of one of 4 worker
processes; the survivors go on in view 2, then a replacement process takes
the freed slot (MOONCAKE_JOIN=1) and all 4 finish with identical parameters
in view 3. Without the replacement the survivors finish in view 2."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FINAL = (r"rank (\d+): final epoch (\d+) active (\[[^]]*\]) params ([0-9a-f]+) "
         r"identical on all active ranks: (True|False)")


def run_example(*extra, env=None):
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "elastic_training.py"),
         "--ranks", "4", "--steps", "40", "--kill-rank", "2", "--kill-at", "10",
         *extra],
        capture_output=True, text=True, timeout=240, env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "SIGKILL rank 2" in p.stdout, out
    return re.findall(FINAL, p.stdout), p.stdout, out


def test_elastic_training_survives_kill():
    finals, _, out = run_example("--rejoin-after", "-1")
    assert sorted(int(f[0]) for f in finals) == [0, 1, 3], out
    for f in finals:
        assert f[1:3] == ("2", "[0, 1, 3]") and f[4] == "True", f
    assert len({f[3] for f in finals}) == 1, finals


def test_elastic_training_replacement_rejoins():
    finals, stdout, out = run_example("--rejoin-after", "3")
    assert "started a replacement for rank 2" in stdout, out
    m = re.search(r"rank 2: replacement admitted in epoch (\d+), continuing "
                  r"at step (\d+)", stdout)
    assert m and m.group(1) == "3", out
    assert 13 <= int(m.group(2)) < 40, out
    # the four processes at the end, the replacement included, in view 3
    assert sorted(int(f[0]) for f in finals) == [0, 1, 2, 3], out
    for f in finals:
        assert f[1:3] == ("3", "[0, 1, 2, 3]") and f[4] == "True", f
    assert len({f[3] for f in finals}) == 1, finals


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_elastic_training_etcd_membership(tmp_path):
    """The same kill and rejoin with etcd membership on: a real etcd, every
    rank holding a leased member key (MOONCAKE_ETCD_ENDPOINTS)."""
    import shutil
    import time
    import urllib.request
    etcd = shutil.which("etcd")
    assert etcd, "etcd is not installed (scripts/setup.sh installs it)"
    cp, pp = _free_port(), _free_port()
    srv = subprocess.Popen(
        [etcd, "--name", "t", "--data-dir", str(tmp_path / "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{cp}",
         "--advertise-client-urls", f"http://127.0.0.1:{cp}",
         "--listen-peer-urls", f"http://127.0.0.1:{pp}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
         "--initial-cluster", f"t=http://127.0.0.1:{pp}",
         "--log-level", "error", "--logger", "zap",
         "--heartbeat-interval", "10", "--election-timeout", "100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{cp}/health",
                                       timeout=1).read()
                break
            except OSError:
                assert time.monotonic() - t0 < 20, "etcd did not start"
                time.sleep(0.02)
        env = dict(os.environ,
                   MOONCAKE_ETCD_ENDPOINTS=f"http://127.0.0.1:{cp}")
        finals, stdout, out = run_example("--rejoin-after", "3", env=env)
        assert "replacement admitted in epoch 3" in stdout, out
        assert sorted(int(f[0]) for f in finals) == [0, 1, 2, 3], out
        for f in finals:
            assert f[1:3] == ("3", "[0, 1, 2, 3]") and f[4] == "True", f
        assert len({f[3] for f in finals}) == 1, finals
    finally:
        srv.kill()
        srv.wait()
