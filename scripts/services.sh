#!/usr/bin/env bash
# Services the test suite needs, started when missing; quick and idempotent.
#
#   redis-server: installed with apt-get when the binary is missing (as root),
#   and a server on 127.0.0.1:6379 (no persistence), started when nothing
#   answers PING there. Run by `make test` (and so by .ci/run).
set -euo pipefail

REDIS_HOST=127.0.0.1
REDIS_PORT=6379

say() { echo "services: $*" >&2; }

redis_answers() {
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(timeout 3 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
    else  # no redis-cli: speak RESP through bash's /dev/tcp
        local reply
        reply=$( (exec 3<>"/dev/tcp/$REDIS_HOST/$REDIS_PORT" && printf 'PING\r\n' >&3 \
            && timeout 2 head -c 5 <&3) 2>/dev/null) || return 1
        [ "$reply" = "+PONG" ]
    fi
}

# redis-server for the stores' tests; openssl makes the TLS test's certificate.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        say "missing ${missing[*]} and this is not root: apt-get install ${missing[*]}"
        exit 1
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! redis_answers; then
    say "starting redis-server on $REDIS_HOST:$REDIS_PORT"
    redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" \
        --save "" --appendonly no
    for _ in $(seq 1 100); do
        redis_answers && break
        sleep 0.1
    done
    if ! redis_answers; then
        say "redis-server did not answer PING on $REDIS_HOST:$REDIS_PORT within 10 s"
        exit 1
    fi
fi
