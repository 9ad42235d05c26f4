"""The many-peer simulation harness (see docs/simulation.md).

Theory of operation: a ``Scenario`` (``sim.scenario``, parsed from TOML) fixes everything a
run does, its seed included. ``sim.engine.Simulator`` holds N virtual peers as one
``[N, P]`` tensor and plays rounds of vectorised local SGD (``sim.models``, ``sim.data``,
``sim.partition``), release (DP, attacks) and mixing (``sim.mixing`` over ``topologies``),
pricing communication with ``sim.cost``, accounting ε with ``sim.privacy`` and measuring
each evaluated round with ``sim.metrics``.
``sim.sweep`` runs grids of scenarios resumably, ``sim.results`` writes result files
atomically and ``sim.plots`` draws the figures; ``sim.reference`` holds the plain per-peer
loops the simulator is validated and benchmarked against.
"""
