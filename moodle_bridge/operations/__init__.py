"""Running the bridge as a service: metrics, health, the checks of ``config check``."""
