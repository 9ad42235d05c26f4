"""Governance: the signed audit log, model versions with lineage, drift monitoring, metrics.

Each part is a small library object the daemon composes: ``AuditLog`` (append-only,
hash-chained, Ed25519-signed JSONL), ``ModelRegistry`` (one folder per aggregated model
with its manifest), ``DriftMonitor`` (metric drops and input drift, returning alerts) and
``NodeMetrics`` (Prometheus metrics on a per-node registry). None of them does network I/O
of its own except ``MetricsServer``, which the operator enables explicitly.
"""
