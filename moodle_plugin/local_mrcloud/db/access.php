<?php
// This file is part of ManiReports Cloud Offload.
//
// This program is free software: you can redistribute it and/or modify
// it under the terms of the GNU General Public License as published by
// the Free Software Foundation, either version 3 of the License, or
// (at your option) any later version.

/**
 * Capabilities: who may open the dashboard.
 *
 * IOMAD assigns its company roles in the company context, so the capability is checked there
 * (iomad::has_capability); the archetypes give it to IOMAD's managers on install. Site admins
 * have every capability. The dashboard re-checks the rights in Moodle's tables itself.
 *
 * @package    local_mrcloud
 * @copyright  2026 ManiReports
 * @license    http://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

defined('MOODLE_INTERNAL') || die();

$capabilities = [
    'local/mrcloud:view' => [
        'riskbitmask' => RISK_PERSONAL,
        'captype' => 'read',
        'contextlevel' => CONTEXT_SYSTEM,
        'archetypes' => [
            'manager' => CAP_ALLOW,
            'companymanager' => CAP_ALLOW,
            'companydepartmentmanager' => CAP_ALLOW,
            'clientadministrator' => CAP_ALLOW,
        ],
    ],
];
