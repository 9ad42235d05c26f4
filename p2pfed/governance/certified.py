"""Commit certificates in the governance records: the registry's copy and the audit's trace.

Theory of operation: the model registry keeps each round's full certificate
(``certificate.json`` next to the model; exports carry ``<file>.certificate.json``), which
``check_certificate`` verifies against a roster: its consortium and version, its signatures
and quorum, and that it certifies exactly the weights in hand. The audit log names peers only
by salted hash, so its ``model_version`` entry holds the certificate's summary (statement
hash, counts), and a ``model_certified`` entry that of a certificate which came after its
round (late votes, or a member's copy); ``compare_certificates`` reports logs whose
summaries fall short of the quorum or that hold different statements for one round.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from p2pfed.errors import ConfigError, IntegrityError, P2PFedError
from p2pfed.governance.audit import roster_members
from p2pfed.identity import Role, Roster

_CERTIFIED = ("model_version", "model_certified")
"""Audit entries that may hold a certificate's summary: in its round, or later."""


def certificate_path_for(model_file: str | os.PathLike[str]) -> Path:
    """Where an exported model's certificate lives: ``<file>.certificate.json``."""
    path = Path(model_file)
    return path.with_name(path.name + ".certificate.json")


def check_certificate(
    path: str | os.PathLike[str],
    roster_path: str | os.PathLike[str],
    weights: NDArray[np.float32],
    round_number: int,
) -> str:
    """One line saying what the certificate at ``path`` proves; ``IntegrityError`` if nothing.

    ``weights`` are the flat shared weights it must certify, from round ``round_number``.
    """
    # Lazily: these pull torch (node.sync), which `p2pfed audit` and `model` start without.
    from p2pfed.collectives.signing import Ed25519CohortSigner
    from p2pfed.node.certificates import CertificatePolicy, CommitCertificate
    from p2pfed.node.sync import weights_digest

    try:
        data = json.loads(Path(path).read_text())
        certificate = CommitCertificate.from_dict(data)
    except OSError as exc:
        raise ConfigError(f"cannot read certificate {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise IntegrityError(f"certificate {path} is malformed: {exc}") from None
    roster_members(roster_path)  # checks the roster's admin signatures
    roster = Roster.load(roster_path)
    keys = {m.peer_id: m.public_key for m in roster.members if m.role is Role.MEMBER}
    verifier = Ed25519CohortSigner(b"\0" * 32, keys)  # verifies only; this seed signs nothing
    policy = CertificatePolicy(roster.consortium_id, roster.version, frozenset(keys), verifier)
    s = certificate.statement
    if s.round != round_number:
        raise IntegrityError(f"certificate {path} is for round {s.round}, not {round_number}")
    if s.digest != weights_digest(np.asarray(weights, dtype=np.float32)):
        raise IntegrityError(f"certificate {path} certifies other weights than these")
    try:
        policy.check(certificate, str(path))
    except P2PFedError as exc:
        raise IntegrityError(str(exc)) from None
    signed = len(policy.valid_signers(certificate))
    return (
        f"certified: {signed} of {len(s.contributors)} contributors signed round {s.round} "
        f"under roster version {s.roster_version}"
    )


def compare_certificates(logs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """One sentence per certificate problem in these (already verified) audit logs."""
    from p2pfed.node.certificates import commit_quorum  # lazily, as in check_certificate

    problems: list[str] = []
    statements: dict[int, dict[str, list[str]]] = {}
    for log in logs:
        for line in Path(log).read_bytes().splitlines():
            entry: dict[str, Any] = json.loads(line)
            body = entry.get("body", {})
            summary = body.get("certificate") if entry.get("kind") in _CERTIFIED else None
            if not isinstance(summary, dict):
                continue
            rnd = body.get("round")
            try:
                signers, contributors = int(summary["signers"]), int(summary["contributors"])
                statement = str(summary["statement"])
            except (KeyError, TypeError, ValueError):
                problems.append(f"{log}: round {rnd}: certificate summary is malformed")
                continue
            if signers < commit_quorum(contributors):
                problems.append(
                    f"{log}: round {rnd}: certificate has {signers} signers of "
                    f"{contributors} contributors, {commit_quorum(contributors)} needed"
                )
            statements.setdefault(int(rnd), {}).setdefault(statement, []).append(str(log))
    for rnd, held in sorted(statements.items()):
        if len(held) > 1:
            problems.append(
                f"round {rnd}: logs hold {len(held)} different certified statements "
                f"({'; '.join(', '.join(v) for v in held.values())})"
            )
    return problems
