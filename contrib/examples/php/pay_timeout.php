<?php
// A PHP shop (Laravel or not) and orderd, through Redis alone.
//
// 1. It writes an order's pay timer the way Laravel's cache store does
//    (Cache::put("order_pay:$id", $id, $ttl) on the default Redis cache
//    connection): the key laravel_database_laravel_cache_:order_pay:<id> in
//    Redis DB 1, with the pay timeout as its TTL. `orderd listen
//    --redis-url redis://host:6379/1 --key-prefix laravel_database_laravel_cache_:`
//    expires the order when the key expires (the order's deadline in the
//    database decides: a TTL that ends early only re-arms the timer).
// 2. It reads the transitions stream laravel_database_laravel_cache_:orderd:transitions
//    with a consumer group (XREADGROUP), acknowledges every entry it has
//    handled, and stops when it has seen the order expire.
//
// Usage: php pay_timeout.php ORDER_ID [TTL_SECONDS]
// Environment (with their defaults): REDIS_HOST=127.0.0.1 REDIS_PORT=6379
// REDIS_DB=1 REDIS_PREFIX=laravel_database_ CACHE_PREFIX=laravel_cache_
// GROUP=shop CONSUMER=php-1 TIMEOUT=60 (seconds to wait for the expiry).
// It prints each transition as a JSON line and exits 0 once the order's
// `expired` transition arrived, 1 on timeout.
//
// Needs PHP's redis extension (Debian: php-cli php-redis).

$orderId = (int) ($argv[1] ?? 0);
$ttl = (int) ($argv[2] ?? 900);
if ($orderId <= 0 || $ttl <= 0) {
    fwrite(STDERR, "usage: php pay_timeout.php ORDER_ID [TTL_SECONDS]\n");
    exit(2);
}
$env = fn (string $name, string $default): string => getenv($name) !== false ? getenv($name) : $default;

$redis = new Redis();
$redis->connect($env('REDIS_HOST', '127.0.0.1'), (int) $env('REDIS_PORT', '6379'));
$redis->select((int) $env('REDIS_DB', '1'));
// Laravel's Redis connection puts its prefix before every key (also the
// stream's); the cache store adds its own prefix and a colon.
$redis->setOption(Redis::OPT_PREFIX, $env('REDIS_PREFIX', 'laravel_database_'));
$cache = $env('CACHE_PREFIX', 'laravel_cache_') . ':';
$stream = $cache . 'orderd:transitions';
$group = $env('GROUP', 'shop');
$consumer = $env('CONSUMER', 'php-1');

// The group starts at the stream's end ('$'): it sees what happens from now
// on. MKSTREAM creates the stream if orderd has not written it yet; an
// existing group (BUSYGROUP) resumes where it left off.
try {
    $redis->xGroup('CREATE', $stream, $group, '$', true);
} catch (RedisException $e) {
    if (strpos($e->getMessage(), 'BUSYGROUP') === false) {
        throw $e;
    }
}
$redis->clearLastError();

// The pay timer, as Cache::put writes it (a numeric value is stored as is).
$redis->setex($cache . "order_pay:$orderId", $ttl, (string) $orderId);
fwrite(STDERR, "order $orderId: pay timer set for {$ttl}s; reading $stream as $group/$consumer\n");

// Delivery is at least once: an entry may come twice (after a failure in
// orderd, or when this consumer dies before its XACK). Deduplicate by
// order_id + to (+ deadline: an entry with one moved the order's deadline);
// a real app does it with a unique key in its own database.
$seen = [];
$deadline = time() + (int) $env('TIMEOUT', '60');
$from = '0'; // first what was delivered to this consumer but not acknowledged, then new entries
while (time() < $deadline) {
    $batch = $redis->xReadGroup($group, $consumer, [$stream => $from], 100, 1000);
    if ($batch === false) {
        fwrite(STDERR, "XREADGROUP failed: " . $redis->getLastError() . "\n");
        exit(1);
    }
    // One stream asked, one answered, under its full name (phpredis puts
    // the connection's prefix on it): take the first.
    $entries = $batch ? reset($batch) : [];
    if ($from === '0' && count($entries) === 0) {
        $from = '>';
        continue;
    }
    foreach ($entries as $id => $t) {
        $key = $t['order_id'] . ':' . $t['to'] . ':' . ($t['deadline'] ?? '');
        if (!isset($seen[$key])) {
            $seen[$key] = true;
            // Here the shop reacts: update its own order, notify the buyer,
            // release a sold-out flag…
            echo json_encode(['entry' => $id] + $t), "\n";
        }
        $redis->xAck($stream, $group, [$id]);
        if ((int) $t['order_id'] === $orderId && $t['to'] === 'expired') {
            fwrite(STDERR, "order $orderId expired at {$t['at']} ({$t['source']})\n");
            exit(0);
        }
    }
}
fwrite(STDERR, "order $orderId did not expire within the timeout\n");
exit(1);
