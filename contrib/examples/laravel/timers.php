<?php
// How a Laravel shop writes the timers orderd runs on its own tables
// (contrib/examples/laravel/orderd.yaml), with phpredis as its cache store
// does: Cache::put("order_pay:$id", $id, $ttl) is a SETEX of
// laravel_database_laravel_cache_:order_pay:<id> on the cache connection.
//
// With --index it also adds each key to orderd's due index, so that orderd
// hands it over at its deadline to the millisecond even with millions of
// keys in Redis (without it, the key's expiry event comes when Redis
// notices the key expired: on time with few keys, up to seconds late with
// millions). The index is 16 sorted sets, <prefix>orderd:due:{<n>}, n being
// the CRC-32 of the whole key name modulo 16, scored by the deadline in Unix
// milliseconds.
//
// Usage: php timers.php pay|confirm TTL_SECONDS [--index] ID...
// Environment (with their defaults): REDIS_HOST=127.0.0.1 REDIS_PORT=6379
// REDIS_DB=1 REDIS_PREFIX=laravel_database_ CACHE_PREFIX=laravel_cache_
//
// Needs PHP's redis extension (Debian: php-cli php-redis).

$kind = $argv[1] ?? '';
$ttl = (float) ($argv[2] ?? 0);
$args = array_slice($argv, 3);
$index = false;
if (($args[0] ?? '') === '--index') {
    $index = true;
    $args = array_slice($args, 1);
}
if (!in_array($kind, ['pay', 'confirm'], true) || $ttl <= 0 || count($args) === 0) {
    fwrite(STDERR, "usage: php timers.php pay|confirm TTL_SECONDS [--index] ID...\n");
    exit(2);
}
$env = fn (string $name, string $default): string => getenv($name) !== false ? getenv($name) : $default;

$redis = new Redis();
$redis->connect($env('REDIS_HOST', '127.0.0.1'), (int) $env('REDIS_PORT', '6379'));
$redis->select((int) $env('REDIS_DB', '1'));
$connPrefix = $env('REDIS_PREFIX', 'laravel_database_');
$redis->setOption(Redis::OPT_PREFIX, $connPrefix); // phpredis puts it before every key
$cache = $env('CACHE_PREFIX', 'laravel_cache_') . ':';

$ms = (int) round($ttl * 1000);
$pipe = $redis->multi(Redis::PIPELINE);
foreach ($args as $id) {
    $key = $cache . "order_$kind:$id";
    $pipe->psetex($key, $ms, $id); // what Cache::put does, to the millisecond
    if ($index) {
        $full = $connPrefix . $key; // the member is the key's whole name
        $shard = crc32($full) % 16;
        $pipe->zAdd($cache . "orderd:due:{{$shard}}", (int) floor(microtime(true) * 1000) + $ms, $full);
    }
}
$pipe->exec();
echo count($args), " $kind timers set for {$ttl}s", $index ? ' (with the due index)' : '', "\n";
