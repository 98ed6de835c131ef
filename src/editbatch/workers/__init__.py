"""Per-device workers: device binding, staggered model loading, readiness records."""
