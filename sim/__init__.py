"""The many-peer simulation harness (see docs/simulation.md)."""
