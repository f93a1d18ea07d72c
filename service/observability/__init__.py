"""Structured logs and Prometheus metrics; neither may break the request path."""
