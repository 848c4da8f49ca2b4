"""Grafana dashboards for otel-stream, built from code; see README.md in this folder."""
