<?php
// This file is part of ManiReports Cloud Offload.
//
// This program is free software: you can redistribute it and/or modify
// it under the terms of the GNU General Public License as published by
// the Free Software Foundation, either version 3 of the License, or
// (at your option) any later version.

/**
 * Settings (shared key, dashboard URL) and a link in Site administration.
 *
 * @package    local_mrcloud
 * @copyright  2026 ManiReports
 * @license    http://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

defined('MOODLE_INTERNAL') || die();

if ($hassiteconfig) {
    $settings = new admin_settingpage('local_mrcloud', get_string('pluginname', 'local_mrcloud'));
    $ADMIN->add('localplugins', $settings);
    $settings->add(new admin_setting_configtext('local_mrcloud/dashboardurl',
        get_string('dashboardurl', 'local_mrcloud'), get_string('dashboardurl_desc', 'local_mrcloud'),
        '', PARAM_URL));
    $settings->add(new admin_setting_configpasswordunmask('local_mrcloud/sharedkey',
        get_string('sharedkey', 'local_mrcloud'), get_string('sharedkey_desc', 'local_mrcloud'), ''));
    $ADMIN->add('reports', new admin_externalpage('local_mrcloud_dashboard',
        get_string('dashboard', 'local_mrcloud'), new moodle_url('/local/mrcloud/launch.php'),
        'local/mrcloud:view'));
}
