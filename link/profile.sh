#!/usr/bin/env bash
# Regenerates link/symbol-order.txt from callgrind profiles of the release binary (see
# link/README.md). Needs valgrind (`apt-get install valgrind`); takes about 15 minutes on 2 cores.
#
#   link/profile.sh            # then rebuild: cargo build --release
#
# ORDER_OUT writes the list elsewhere (default: link/symbol-order.txt); CARGO_TARGET_DIR is
# honoured.
#
# The gateway (`bindgate run`) runs under callgrind in two of the benches' scenarios: `idle`
# with 100 discovered endpoints (start-up, registration, discovery, the admin server, scrapes),
# then `load --quick` (every transport, the http listener, and the peers' table when installed).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }

work=$(mktemp -d)
trap 'pkill -TERM -f "valgrind.*$work" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/out"

cargo build --release
bin="${CARGO_TARGET_DIR:-$repo/target}/release/bindgate"
cp "$bin" "$work/bindgate"

# The benches stop their gateways with SIGKILL, which would lose the profile: the wrapper runs
# the gateway as its child, so the kill takes the wrapper only, and the gateway is asked to stop
# with SIGTERM below, when it writes its profile on the way out.
cat > "$work/wrapper" <<WRAP
#!/usr/bin/env bash
if [ "\$1" = run ]; then
  # The default log level, as deployments run (the benches ask for warn): its code is listed.
  unset BINDGATE_LOG
  valgrind --tool=callgrind --demangle=no --compress-strings=no --compress-pos=no \\
    --dump-instr=no --callgrind-out-file=$work/out/cg.%p -q $work/bindgate "\$@" &
  wait
  exit
fi
exec $work/bindgate "\$@"
WRAP
chmod +x "$work/wrapper"

# A gateway drains for up to 30 s (slower under callgrind); one still there after 3 minutes is
# killed, and its profile is lost.
stop_gateways() {
  pkill -TERM -f "valgrind.*$work" 2>/dev/null || true
  for _ in $(seq 180); do
    pgrep -f "valgrind.*$work" >/dev/null || return 0
    sleep 1
  done
  echo "a gateway did not stop within 3 minutes; killed, its profile is lost" >&2
  pkill -KILL -f "valgrind.*$work" 2>/dev/null || true
}

BINDGATE_BIN="$work/wrapper" cargo bench --bench idle -- --endpoints 100
stop_gateways
mv "$work/out" "$work/idle" && mkdir "$work/out"
BINDGATE_BIN="$work/wrapper" cargo bench --bench load -- --quick
stop_gateways

python3 link/symbol_order.py "$work/bindgate" "${ORDER_OUT:-link/symbol-order.txt}" "$work"/idle/cg.* --then "$work"/out/cg.*
