"""Harnesses for tests and benchmarks, kept out of the protocol packages.

``process`` runs collectives between real peer processes over libp2p on loopback;
``process_attacks`` holds the attacks those processes can play. Nothing in the peer, the
daemon or the command line imports this package, except ``p2pfed bench allreduce``.
"""
