"""The node's audit log: append-only JSONL, hash-chained and Ed25519-signed.

Theory of operation: every governance-relevant event (daemon start/stop, round start/end,
the round's cohort, the resulting model hash, DP parameters and ε, roster changes,
exclusions, drift alerts) becomes one JSON line::

    {"v":1,"seq":7,"ts":1764270000.0,"kind":"dp","body":{...},
     "prev":"<sha256 of line 6's canonical JSON>","signer":"12D3Koo...",
     "key":"<ed25519 public key hex>","sig":"<ed25519 signature hex>"}

*Canonical JSON* is ``p2pfed.canonical.canonical_json`` (sorted keys, no whitespace,
ASCII only, no NaN). ``sig`` signs ``SIGNING_DOMAIN`` + the canonical JSON of the entry
without ``sig``; ``prev`` is the SHA-256 of the previous entry's canonical JSON *with*
its signature (64 zeros for the first entry). So editing any entry breaks its signature,
and deleting, reordering or inserting entries breaks the sequence numbers and the chain;
only the node's private key can extend the log. What the chain alone cannot show is that
the *last* entries were cut off: comparing heads and model hashes across members
(``compare_logs``) covers that.

The parts: ``entries`` (fields, kinds, hash, signed bytes), ``salt`` (the node's secret
salt; peer IDs in bodies are HMAC-SHA256(salt, peer ID), never raw; the signer's own peer
ID is in clear, since verification needs it), ``log`` (``AuditLog``: durable, locked,
appending), ``verify`` (``verify_log``: pure, names the first bad entry or returns the
head hash) and ``compare`` (``compare_logs`` across members).
"""

from p2pfed.governance.audit.compare import CompareReport, Disagreement, compare_logs
from p2pfed.governance.audit.entries import (
    GENESIS_HASH,
    SIGNING_DOMAIN,
    EntryKind,
    entry_hash,
    signing_message,
)
from p2pfed.governance.audit.log import AuditLog
from p2pfed.governance.audit.salt import SALT_FILE, create_salt_file, hash_peer_id, read_salt_file
from p2pfed.governance.audit.verify import (
    Problem,
    ProblemKind,
    VerifyReport,
    roster_members,
    verify_entries,
    verify_log,
)

__all__ = [
    "GENESIS_HASH",
    "SALT_FILE",
    "SIGNING_DOMAIN",
    "AuditLog",
    "CompareReport",
    "Disagreement",
    "EntryKind",
    "Problem",
    "ProblemKind",
    "VerifyReport",
    "compare_logs",
    "create_salt_file",
    "entry_hash",
    "hash_peer_id",
    "read_salt_file",
    "roster_members",
    "signing_message",
    "verify_entries",
    "verify_log",
]
