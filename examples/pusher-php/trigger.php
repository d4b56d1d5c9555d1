<?php
// Triggers one event through wsgate's Pusher HTTP API, signed the way pusher-php-server and
// Laravel's broadcaster sign it, with nothing from Packagist: PHP's CLI, hash_hmac and an
// HTTPS stream (the openssl extension every Debian php-cli has).
//
//   PUSHER_APP_ID=1001 PUSHER_APP_KEY=app-key PUSHER_APP_SECRET=... \
//   PUSHER_HOST=localhost PUSHER_PORT=8443 PUSHER_CA=certs/dev/ca.crt \
//   php examples/pusher-php/trigger.php orders 'App\Events\OrderShipped' '{"id":42}' [socket_id]
//
// PUSHER_CA is the CA that signed the gateway's certificate when it is not one the system
// trusts (wsgate's dev CA); leave it unset in production. Prints the gateway's answer; exits
// 0 on 200, 1 otherwise.

function env_or(string $name, ?string $default = null): string
{
    $value = getenv($name);
    if ($value === false || $value === '') {
        if ($default === null) {
            fwrite(STDERR, "set $name\n");
            exit(2);
        }
        return $default;
    }
    return $value;
}

if ($argc < 4) {
    fwrite(STDERR, "usage: php trigger.php <channel> <event> <data-json> [socket_id]\n");
    exit(2);
}
[, $channel, $event, $data] = $argv;
$socketId = $argv[4] ?? null;

$appId = env_or('PUSHER_APP_ID');
$key = env_or('PUSHER_APP_KEY');
$secret = env_or('PUSHER_APP_SECRET');
$host = env_or('PUSHER_HOST', 'localhost');
$port = env_or('PUSHER_PORT', '443');
$ca = getenv('PUSHER_CA') ?: null;

// The body: `data` travels as a string, as the SDKs send it (Echo's listener gets it parsed).
$event = ['name' => $event, 'channels' => [$channel], 'data' => $data];
if ($socketId !== null) {
    $event['socket_id'] = $socketId; // Laravel's toOthers(): not to this connection
}
$body = json_encode($event, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);

// Pusher request signing: every query parameter but auth_signature, sorted by name, joined
// unencoded as k=v with &, signed with "METHOD\npath\nquery".
$path = "/apps/$appId/events";
$params = [
    'auth_key' => $key,
    'auth_timestamp' => (string) time(),
    'auth_version' => '1.0',
    'body_md5' => md5($body),
];
ksort($params);
$toSign = implode('&', array_map(fn ($k, $v) => "$k=$v", array_keys($params), $params));
$params['auth_signature'] = hash_hmac('sha256', "POST\n$path\n$toSign", $secret);
// Sent URL-encoded, as Guzzle does; the gateway decodes before verifying.
$url = "https://$host:$port$path?" . http_build_query($params);

$ssl = ['verify_peer' => true, 'verify_peer_name' => true, 'peer_name' => $host];
if ($ca !== null) {
    $ssl['cafile'] = $ca;
}
$context = stream_context_create([
    'http' => [
        'method' => 'POST',
        'header' => "Content-Type: application/json\r\n",
        'content' => $body,
        'timeout' => 10,
        'ignore_errors' => true, // read the answer of a refusal too
    ],
    'ssl' => $ssl,
]);
$answer = @file_get_contents($url, false, $context);
if ($answer === false) {
    fwrite(STDERR, "request failed: " . (error_get_last()['message'] ?? 'unknown error') . "\n");
    exit(1);
}
$status = 0;
foreach ($http_response_header as $line) {
    if (preg_match('#^HTTP/\S+ (\d{3})#', $line, $m)) {
        $status = (int) $m[1];
    }
}
echo "$status $answer\n";
exit($status === 200 ? 0 : 1);
