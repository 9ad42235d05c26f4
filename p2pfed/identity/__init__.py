"""Who a peer is and who it may talk to: Ed25519 identities and the signed roster.

``keys`` holds identities, key files and libp2p peer IDs (computed without importing
libp2p); ``roster`` holds the consortium roster, its m-of-n admin signatures and the
state file that stops rollbacks. See docs/deployment.md for the operator's view.
"""

from p2pfed.identity.keys import (
    PUBLIC_KEY_SIZE,
    SEED_SIZE,
    SIGNATURE_SIZE,
    Identity,
    peer_id_from_public_key,
    public_key_from_peer_id,
    verify_signature,
)
from p2pfed.identity.roster import (
    AcceptedRoster,
    Member,
    Role,
    Roster,
    RosterError,
    RosterGate,
    RosterProblem,
    RosterSignature,
    RosterStore,
    check_roster,
    load_roster,
)

__all__ = [
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SIGNATURE_SIZE",
    "AcceptedRoster",
    "Identity",
    "Member",
    "Role",
    "Roster",
    "RosterError",
    "RosterGate",
    "RosterProblem",
    "RosterSignature",
    "RosterStore",
    "check_roster",
    "load_roster",
    "peer_id_from_public_key",
    "public_key_from_peer_id",
    "verify_signature",
]
