"""The DR site: standbys, parity, failover, failback, drills, preflight, checklist."""
