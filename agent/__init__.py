"""The moonwatch agent process: wiring, lifecycle, CLI, HTTP API, edge, metrics and logs."""
