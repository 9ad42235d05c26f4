"""Who a peer is and who it may talk to: Ed25519 identities and the signed roster.

``keys`` holds identities, key files and libp2p peer IDs (computed without importing
libp2p); ``roster`` holds the consortium roster document and its m-of-n admin signatures,
``roster_fields`` its checked fields, ``roster_trust`` the acceptance rules, the state file
that stops rollbacks and the live ``RosterGate``; ``expiry`` warns ahead of the expiry;
``protocol`` holds the study protocol the admins signed.
See docs/deployment.md for the operator's view.
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
from p2pfed.identity.protocol import Feature, StudyProtocol, check_protocol
from p2pfed.identity.roster import Roster
from p2pfed.identity.roster_fields import (
    Member,
    Role,
    RosterError,
    RosterProblem,
    RosterSignature,
    format_time,
    parse_time,
)
from p2pfed.identity.roster_trust import (
    AcceptedRoster,
    RosterGate,
    RosterStore,
    check_roster,
    load_roster,
)

__all__ = [
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SIGNATURE_SIZE",
    "AcceptedRoster",
    "Feature",
    "Identity",
    "Member",
    "Role",
    "Roster",
    "RosterError",
    "RosterGate",
    "RosterProblem",
    "RosterSignature",
    "RosterStore",
    "StudyProtocol",
    "check_protocol",
    "check_roster",
    "format_time",
    "load_roster",
    "parse_time",
    "peer_id_from_public_key",
    "public_key_from_peer_id",
    "verify_signature",
]
