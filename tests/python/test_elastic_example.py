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


def run_example(*extra):
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "elastic_training.py"),
         "--ranks", "4", "--steps", "40", "--kill-rank", "2", "--kill-at", "10",
         *extra],
        capture_output=True, text=True, timeout=240)
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
