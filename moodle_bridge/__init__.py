"""The bridge that runs beside Moodle/IOMAD: claims queued mail, routes it per company,
submits batches to the cloud and ingests the results."""
