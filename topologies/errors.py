"""Errors raised by the topologies library."""


class TopologyError(ValueError):
    """A graph, file or mixing matrix is invalid; the message names what and where."""
