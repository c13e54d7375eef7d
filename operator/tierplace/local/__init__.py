"""The embedded stack: tritonserver, Prometheus and the router as local processes."""
