<?php
// This file is part of ManiReports Cloud Offload.
//
// This program is free software: you can redistribute it and/or modify
// it under the terms of the GNU General Public License as published by
// the Free Software Foundation, either version 3 of the License, or
// (at your option) any later version.

/**
 * A tile in IOMAD's dashboard, on the Reports pane (8) beside the Outgoing Email Report.
 *
 * IOMAD checks 'cap' in the current company's context. A new tile appears after a cache purge
 * or a version bump.
 *
 * @package    local_mrcloud
 * @copyright  2026 ManiReports
 * @license    http://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

defined('MOODLE_INTERNAL') || die();

/**
 * The plugin's entries in IOMAD's dashboard menu.
 *
 * @return array
 */
function local_mrcloud_menu() {
    return [
        'mrclouddashboard' => [
            'category' => 'Reports',
            'tab' => 8,
            'name' => get_string('dashboard', 'local_mrcloud'),
            'url' => '/local/mrcloud/launch.php',
            'cap' => 'local/mrcloud:view',
            'icondefault' => 'report',
            'style' => 'report',
            'icon' => 'fa-envelope',
            'iconsmall' => 'fa-cloud',
        ],
    ];
}
