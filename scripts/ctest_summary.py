#!/usr/bin/env python3
"""Print the failure lines of each failed ctest test, compactly.

Usage: ctest_summary.py BUILD_DIR [MAX_LINES]

scripts/test.sh calls this at its end so that the reason a C test failed
is in the last lines of the run (CI keeps the head of the first failing
test's output and the tail of the run; a long test such as test_kill puts
its failing case in the middle). Reads Testing/Temporary/LastTest.log.
The library's own log lines (mooncake[pid] ...) are left out: the fault
tests provoke errors on purpose and log them.
"""
import re
import sys
from pathlib import Path

WANT = re.compile(r"FAIL|problem|harness|want |mismatch|assert|Sanitizer|"
                  r"runtime error|Timeout|Traceback|Error:|ERROR|wait status|"
                  r"exited with|died of|did not")
NOISE = re.compile(r"^mooncake\[\d+\] |^\[ (RUN|  OK|kill) ")


def main() -> int:
    build = Path(sys.argv[1])
    cap = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    tmp = build / "Testing" / "Temporary"
    failed_log = tmp / "LastTestsFailed.log"
    if not failed_log.exists():
        return 0
    failed = [ln.split(":", 1)[1].strip()
              for ln in failed_log.read_text(errors="replace").splitlines()
              if ":" in ln]
    log = (tmp / "LastTest.log").read_text(errors="replace")
    # each test's section starts with "N/M Testing: NAME"
    sections = re.split(r"^\d+/\d+ Testing: ", log, flags=re.M)
    for name in failed:
        # the last run of that name (ctest --repeat runs it again)
        body = next((s for s in reversed(sections)
                     if s.split("\n", 1)[0] == name), "")
        lines = [ln for ln in body.splitlines()
                 if WANT.search(ln) and not NOISE.search(ln)]
        print(f"-- {build.name}: {name} failed; its failure lines "
              f"({len(lines)}, at most {cap} shown):")
        for ln in lines[:cap]:
            print("   " + ln[:300])
        status = re.search(r'^Test (Failed|Passed).*$|^"[^"]+" end time.*$',
                           body, flags=re.M)
        if status:
            print("   " + status.group(0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
