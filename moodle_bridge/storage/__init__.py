"""Data access for the bridge: its own tables and (in ``iomad``) the Moodle/IOMAD tables it reads."""
