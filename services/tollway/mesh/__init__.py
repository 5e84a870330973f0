"""What every Tollway service shares: config, serve(), clients, errors, telemetry, Redis."""
