"""Where mail comes from: IOMAD's email queue (iomad/), plain Moodle lists, later campaigns."""
