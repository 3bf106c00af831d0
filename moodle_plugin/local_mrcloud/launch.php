<?php
// This file is part of ManiReports Cloud Offload.
//
// This program is free software: you can redistribute it and/or modify
// it under the terms of the GNU General Public License as published by
// the Free Software Foundation, either version 3 of the License, or
// (at your option) any later version.

/**
 * Launch page: check the user, find their IOMAD company, redirect to the dashboard with a token.
 *
 * The company is found the way IOMAD's own report pages (Outgoing Email Report) find it:
 * iomad::get_my_companyid() (the company chosen in the IOMAD dashboard), and the capability is
 * checked in that company's context with iomad::require_capability(), which also honours IOMAD's
 * role restrictions. Site admins may have no company chosen: they get company 0 (every company).
 *
 * @package    local_mrcloud
 * @copyright  2026 ManiReports
 * @license    http://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

require_once(__DIR__ . '/../../config.php');

require_login(null, false);
if (isguestuser()) {
    throw new require_login_exception('Guests cannot open the dashboard');
}

$systemcontext = context_system::instance();
$PAGE->set_context($systemcontext);
$PAGE->set_url(new moodle_url('/local/mrcloud/launch.php'));

// IOMAD 4.x keeps its class in local/iomad/lib/iomad.php, which a plugin page loads itself (as
// many of IOMAD's own files do); IOMAD 5.x autoloads it (local_iomad\iomad, renamed from iomad).
if (!class_exists('iomad') && file_exists($CFG->dirroot . '/local/iomad/lib/iomad.php')) {
    require_once($CFG->dirroot . '/local/iomad/lib/iomad.php');
}

$companyid = 0;
if (class_exists('iomad')) {
    // IOMAD: the session's company; a site admin without one sees every company.
    $companyid = (int) iomad::get_my_companyid($systemcontext, !is_siteadmin());
    if ($companyid > 0) {
        $companycontext = \core\context\company::instance($companyid);
        iomad::require_capability('local/mrcloud:view', $companycontext);
    } else {
        require_capability('local/mrcloud:view', $systemcontext);
    }
} else {
    require_capability('local/mrcloud:view', $systemcontext);
}

$url = get_config('local_mrcloud', 'dashboardurl');
$key = get_config('local_mrcloud', 'sharedkey');
if (empty($url) || empty($key)) {
    throw new moodle_exception('notconfigured', 'local_mrcloud');
}
try {
    $token = \local_mrcloud\token::sign($key, (int) $USER->id, $companyid, time());
} catch (\InvalidArgumentException $e) {
    throw new moodle_exception('badkey', 'local_mrcloud');
}
// The token is one-time and lives 60 s; the dashboard strips it from the address at once.
redirect(\local_mrcloud\token::signin_url($url, $token));
