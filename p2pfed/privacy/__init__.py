"""Differential privacy: clipping and noise mechanisms, accountants, a persistent ledger.

Theory of operation: a node clips its update to L2 ≤ S, checks it is finite, reserves the
privacy cost of releasing it in its ``PrivacyLedger`` (an fsynced, checksummed, append-only
file re-read on every start), and only then adds Gaussian noise and lets it go. The ledger
composes releases with an accountant: ``PLDAccountant`` (tight, the default) or
``RDPAccountant`` (fast). ``PrivateReleaser`` is that sequence as one layer. Example-level
DP-SGD for local training lives in ``p2pfed.privacy.dpsgd`` and batched (peers × d)
clipping and noise for the simulator in ``p2pfed.privacy.batched``; both import torch, so
they are not imported here. See docs/privacy.md.
"""

from p2pfed.privacy.accountants import (
    ACCOUNTANT_KINDS,
    DEFAULT_ACCOUNTANT,
    Accountant,
    PLDAccountant,
    RDPAccountant,
    Step,
    make_accountant,
)
from p2pfed.privacy.calibrate import epsilon_for, noise_multiplier_for, releases_within_budget
from p2pfed.privacy.ledger import LedgerRecord, PrivacyLedger, Release
from p2pfed.privacy.mechanisms import NoiseMode
from p2pfed.privacy.release import PrivateReleaser

__all__ = [
    "ACCOUNTANT_KINDS",
    "DEFAULT_ACCOUNTANT",
    "Accountant",
    "LedgerRecord",
    "NoiseMode",
    "PLDAccountant",
    "PrivacyLedger",
    "PrivateReleaser",
    "RDPAccountant",
    "Release",
    "Step",
    "epsilon_for",
    "make_accountant",
    "noise_multiplier_for",
    "releases_within_budget",
]
