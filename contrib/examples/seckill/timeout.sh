#!/bin/sh
# Sets the pay-timeout keys of flash-sale orders as the shop's Java code does
# (RedisTemplate.opsForValue().set("seckill:order:timeout:" + orderNo, "1",
# ttl)), with redis-cli: one SET … PX per order number, in one pipe.
#
# Usage: timeout.sh TTL_MS ORDER_NO...
# Environment: REDIS_HOST (127.0.0.1), REDIS_PORT (6379), REDIS_DB (0).
set -eu
[ $# -ge 2 ] || { echo "usage: timeout.sh TTL_MS ORDER_NO..." >&2; exit 2; }
ttl=$1
shift
for no in "$@"; do
	printf 'SET seckill:order:timeout:%s 1 PX %s\n' "$no" "$ttl"
done | redis-cli -h "${REDIS_HOST:-127.0.0.1}" -p "${REDIS_PORT:-6379}" -n "${REDIS_DB:-0}" >/dev/null
echo "$# pay timers set for ${ttl} ms"
