<?php
// This file is part of ManiReports Cloud Offload.
//
// This program is free software: you can redistribute it and/or modify
// it under the terms of the GNU General Public License as published by
// the Free Software Foundation, either version 3 of the License, or
// (at your option) any later version.

/**
 * English strings for local_mrcloud.
 *
 * @package    local_mrcloud
 * @copyright  2026 ManiReports
 * @license    http://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

defined('MOODLE_INTERNAL') || die();

$string['pluginname'] = 'ManiReports Cloud Offload';
$string['mrcloud:view'] = 'Open the cloud mail dashboard';
$string['dashboard'] = 'Cloud mail dashboard';
$string['dashboardurl'] = 'Dashboard URL';
$string['dashboardurl_desc'] = 'The address of the dashboard (moodle-offload dashboard serve) as users reach it, for example https://mail.example.org/dashboard.';
$string['sharedkey'] = 'Shared key';
$string['sharedkey_desc'] = 'The same value as dashboard.shared_key (MRCO_DASHBOARD_KEY) on the bridge: base64url of at least 32 random bytes. Sign-in links are signed with it.';
$string['notconfigured'] = 'The cloud mail dashboard is not configured yet: set its URL and shared key in Site administration > Plugins > Local plugins > ManiReports Cloud Offload.';
$string['badkey'] = 'The shared key of the cloud mail dashboard is not valid (base64url of at least 32 bytes).';
$string['privacy:metadata:dashboard'] = 'The external dashboard receives the user id and company id.';
$string['privacy:metadata:dashboard:userid'] = 'The id of the user opening the dashboard.';
$string['privacy:metadata:dashboard:companyid'] = 'The IOMAD company the user is working in.';
