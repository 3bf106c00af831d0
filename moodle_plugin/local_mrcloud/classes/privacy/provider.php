<?php
// This file is part of ManiReports Cloud Offload.
//
// This program is free software: you can redistribute it and/or modify
// it under the terms of the GNU General Public License as published by
// the Free Software Foundation, either version 3 of the License, or
// (at your option) any later version.

/**
 * Privacy: the plugin stores nothing; it sends the user id and company id to the dashboard.
 *
 * @package    local_mrcloud
 * @copyright  2026 ManiReports
 * @license    http://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

namespace local_mrcloud\privacy;

use core_privacy\local\metadata\collection;

/**
 * Metadata provider: one external location, the dashboard.
 */
class provider implements \core_privacy\local\metadata\provider {
    /**
     * What the plugin sends out of Moodle.
     *
     * @param collection $collection
     * @return collection
     */
    public static function get_metadata(collection $collection): collection {
        $collection->add_external_location_link('dashboard', [
            'userid' => 'privacy:metadata:dashboard:userid',
            'companyid' => 'privacy:metadata:dashboard:companyid',
        ], 'privacy:metadata:dashboard');
        return $collection;
    }
}
