#!/usr/bin/env bash
# The fault-tolerance suite again with etcd membership on: start a real etcd
# on loopback (temporary data dir), point MOONCAKE_ETCD_ENDPOINTS at it and
# run the given commands, each one argument (ctest passes the test_kill,
# test_stop and test_rejoin binaries; scripts/test.sh the torch fault tests).
# Every communicator with fault tolerance then also holds a leased member
# key and watches the others'.
set -euo pipefail
ETCD=${ETCD:-$(command -v etcd || true)}
if [ -z "$ETCD" ]; then
  echo "etcd_mode: etcd is not installed (run scripts/setup.sh)" >&2
  exit 1
fi
D=$(mktemp -d)
# a free port below the kernel's ephemeral range: one from the range that
# was closed again can be taken by any outgoing connection before etcd
# binds it
port() { python3 - <<'PY'
import random, socket
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(200):
    p = random.randrange(20000, lo) if lo - 20000 >= 1000 else 0
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
PY
}
EPID=
trap 'st=$?; [ -n "$EPID" ] && { kill $EPID 2>/dev/null || true; wait $EPID 2>/dev/null || true; }; rm -rf "$D"; exit $st' EXIT
# an etcd that exits (a port taken after all) starts again on new ports
for attempt in 1 2 3; do
  CP=$(port); PP=$(port)
  rm -rf "$D/data"
  "$ETCD" --name t --data-dir "$D/data" \
    --listen-client-urls "http://127.0.0.1:$CP" --advertise-client-urls "http://127.0.0.1:$CP" \
    --listen-peer-urls "http://127.0.0.1:$PP" --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
    --initial-cluster "t=http://127.0.0.1:$PP" --log-level error --logger zap \
    --heartbeat-interval 10 --election-timeout 100 >"$D/etcd.log" 2>&1 &
  EPID=$!
  for _ in $(seq 1 500); do
    curl -sf "http://127.0.0.1:$CP/health" >/dev/null 2>&1 && break
    kill -0 $EPID 2>/dev/null || break
    sleep 0.02
  done
  curl -sf "http://127.0.0.1:$CP/health" >/dev/null 2>&1 && break
  echo "etcd_mode: etcd did not start (attempt $attempt):" >&2
  cat "$D/etcd.log" >&2
  kill $EPID 2>/dev/null || true; wait $EPID 2>/dev/null || true; EPID=
  [ "$attempt" -lt 3 ] || exit 1
done
export MOONCAKE_ETCD_ENDPOINTS="http://127.0.0.1:$CP"
echo "etcd_mode: etcd at $MOONCAKE_ETCD_ENDPOINTS"
rc=0
for t in "$@"; do
  echo "etcd_mode: == $t"
  bash -c "$t" || rc=1
done
exit $rc
