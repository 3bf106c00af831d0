<?php
// This file is part of ManiReports Cloud Offload.
//
// This program is free software: you can redistribute it and/or modify
// it under the terms of the GNU General Public License as published by
// the Free Software Foundation, either version 3 of the License, or
// (at your option) any later version.

/**
 * Sign-in to the ManiReports Cloud Offload dashboard from Moodle/IOMAD.
 *
 * @package    local_mrcloud
 * @copyright  2026 ManiReports
 * @license    http://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

defined('MOODLE_INTERNAL') || die();

$plugin->component = 'local_mrcloud';
$plugin->version   = 2026112900;
$plugin->requires  = 2022112800; // Moodle 4.1 (IOMAD 4.1 and later).
$plugin->maturity  = MATURITY_BETA;
$plugin->release   = '0.1.0';
