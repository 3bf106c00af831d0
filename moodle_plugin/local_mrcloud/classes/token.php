<?php
// This file is part of ManiReports Cloud Offload - https://github.com/manireports
//
// This program is free software: you can redistribute it and/or modify
// it under the terms of the GNU General Public License as published by
// the Free Software Foundation, either version 3 of the License, or
// (at your option) any later version.

/**
 * The dashboard sign-in token (spec: docs/dashboard.md; Python twin: offload_contract/dashboard_token.py).
 *
 * Both sides check offload_contract/vectors/dashboard_token.json in the test suite.
 *
 * @package    local_mrcloud
 * @copyright  2026 ManiReports
 * @license    http://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

namespace local_mrcloud;

defined('MOODLE_INTERNAL') || die();

/**
 * Signs short-lived, one-time sign-in tokens for the external dashboard.
 */
class token {
    /** Scheme line, the first line of the signed text. */
    const SCHEME = 'MRCO-DASH-1';
    /** HKDF salt, shared with the callback keys. */
    const SALT = 'manireports-cloud-offload';
    /** HKDF info: names the purpose of the key. */
    const INFO = 'dashboard-signin:v1';
    /** Longest lifetime the dashboard accepts, in seconds. */
    const MAX_LIFETIME = 60;

    /**
     * Decode base64url without padding.
     *
     * @param string $text
     * @return string|false
     */
    public static function b64url_decode(string $text) {
        $text = strtr(trim($text), '-_', '+/');
        $text .= str_repeat('=', (4 - strlen($text) % 4) % 4);
        return base64_decode($text, true);
    }

    /**
     * Encode base64url without padding.
     *
     * @param string $bytes
     * @return string
     */
    public static function b64url_encode(string $bytes): string {
        return rtrim(strtr(base64_encode($bytes), '+/', '-_'), '=');
    }

    /**
     * The HMAC key derived from the shared secret (base64url, at least 32 bytes).
     *
     * @param string $sharedsecret
     * @return string raw key bytes
     * @throws \InvalidArgumentException
     */
    public static function derive_key(string $sharedsecret): string {
        $raw = self::b64url_decode($sharedsecret);
        if ($raw === false || strlen($raw) < 32) {
            throw new \InvalidArgumentException('The shared key must be base64url of at least 32 bytes');
        }
        return hash_hkdf('sha256', $raw, 32, self::INFO, self::SALT);
    }

    /**
     * A new one-time id: 18 random bytes, base64url (24 characters).
     *
     * @return string
     */
    public static function new_jti(): string {
        return self::b64url_encode(random_bytes(18));
    }

    /**
     * The canonical JSON payload: sorted keys, no spaces, integers.
     *
     * @param int $userid
     * @param int $companyid
     * @param int $expires
     * @param string $jti
     * @return string
     */
    public static function canonical_payload(int $userid, int $companyid, int $expires, string $jti): string {
        $data = ['uid' => $userid, 'company' => $companyid, 'exp' => $expires, 'jti' => $jti, 'v' => 1];
        ksort($data, SORT_STRING);
        return json_encode($data, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_LINE_TERMINATORS);
    }

    /**
     * Sign a token for this user and company.
     *
     * @param string $sharedsecret the key configured in the plugin settings
     * @param int $userid Moodle user id
     * @param int $companyid IOMAD company id, 0 for none (site admins)
     * @param int $now unix time
     * @param int $lifetime seconds, 1..60
     * @param string|null $jti one-time id (a new random one when null)
     * @return string
     */
    public static function sign(string $sharedsecret, int $userid, int $companyid, int $now,
            int $lifetime = self::MAX_LIFETIME, ?string $jti = null): string {
        if ($userid <= 0 || $companyid < 0) {
            throw new \InvalidArgumentException('user id must be > 0 and company id >= 0');
        }
        if ($lifetime < 1 || $lifetime > self::MAX_LIFETIME) {
            throw new \InvalidArgumentException('a sign-in token lives 1 to 60 seconds');
        }
        if ($jti === null) {
            $jti = self::new_jti();
        }
        if (!preg_match('/^[A-Za-z0-9_-]{16,64}$/', $jti)) {
            throw new \InvalidArgumentException('jti must be 16-64 characters of base64url');
        }
        $payload = self::b64url_encode(self::canonical_payload($userid, $companyid, $now + $lifetime, $jti));
        $mac = hash_hmac('sha256', self::SCHEME . "\n" . $payload, self::derive_key($sharedsecret));
        return $payload . '.' . $mac;
    }

    /**
     * The dashboard URL with the token (the dashboard's /signin route).
     *
     * @param string $dashboardurl base URL, e.g. https://mail.example.org/dashboard
     * @param string $token
     * @return string
     */
    public static function signin_url(string $dashboardurl, string $token): string {
        return rtrim($dashboardurl, '/') . '/signin?token=' . rawurlencode($token);
    }
}
