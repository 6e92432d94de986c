"""examples/elastic_training.py end to end: a real SIGKILL of one of 4 worker
processes; the survivors must finish with identical parameters in view 2."""
import os
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
    finals = [l for l in p.stdout.splitlines() if ": final epoch" in l]
    assert len(finals) == 3, out
    for l in finals:
        assert "final epoch 2 active [0, 1, 3]" in l, l
        assert l.endswith("identical on all active ranks: True"), l
    digests = {l.split(" params ")[1].split()[0] for l in finals}
    assert len(digests) == 1, finals
    assert "SIGKILL rank 2" in p.stdout, out
