"""examples/elastic_training.py end to end: a real SIGKILL of one of 4 worker
processes; the survivors must finish with identical parameters in view 2."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_elastic_training_survives_kill():
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "elastic_training.py"),
         "--ranks", "4", "--steps", "40", "--kill-rank", "2", "--kill-at", "10"],
        capture_output=True, text=True, timeout=240)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    finals = re.findall(r"rank (\d+): final epoch (\d+) active (\[[^]]*\]) "
                        r"params ([0-9a-f]+) identical on all active ranks: "
                        r"(True|False)", p.stdout)
    assert sorted(int(f[0]) for f in finals) == [0, 1, 3], out
    for f in finals:
        assert f[1:3] == ("2", "[0, 1, 3]") and f[4] == "True", f
    assert len({f[3] for f in finals}) == 1, finals
    assert "SIGKILL rank 2" in p.stdout, out
