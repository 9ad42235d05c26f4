"""Certificates in the records: the registry keeps them, ``model check`` and ``audit compare``
verify them and report forged or insufficient ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from governance_helpers import SALT, FakeClock, model_hash_for
from test_governance_cli import write_roster

from p2pfed.cli import main
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.governance.audit import AuditLog, verify_log
from p2pfed.governance.models import ModelRegistry, tensors_from_flat
from p2pfed.governance.recorder import GovernanceRecorder
from p2pfed.identity import Identity
from p2pfed.node.certificates import CommitCertificate, CommitStatement, assemble
from p2pfed.node.sync import weights_digest

IDS = [Identity.from_seed(bytes([0x30 + k]) * 32) for k in range(3)]
KEYS = {i.peer_id: i.public_key for i in IDS}
WEIGHTS = np.linspace(-1, 1, 6).astype(np.float32)


def certificate(signers: int, weights: np.ndarray = WEIGHTS, round_: int = 4) -> CommitCertificate:
    statement = CommitStatement("demo", 1, round_, weights_digest(weights), tuple(sorted(KEYS)))
    data = statement.signed_bytes()
    votes = [(i.peer_id, Ed25519CohortSigner(i.seed, KEYS).sign(data)) for i in IDS[:signers]]
    return assemble(statement, votes)


def export(tmp_path: Path, cert: CommitCertificate | None) -> Path:
    registry = ModelRegistry(tmp_path / "models")
    registry.add(
        4,
        tensors_from_flat(["w"], [(6,)], WEIGHTS),
        parent_hash=None,
        certificate=None if cert is None else cert.to_dict(),
    )
    out = tmp_path / "model.pt"
    registry.export("latest", out)
    return out


def test_model_check_verifies_the_certificate_against_the_roster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    roster = write_roster(tmp_path / "roster.json", *IDS)
    out = export(tmp_path, certificate(2))
    assert main(["model", "check", str(out), "--roster", str(roster)]) == 0
    assert "certified: 2 of 3 contributors signed round 4" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("cert", "message"),
    [
        (certificate(1), "1 valid signatures of 3 contributors, 2 needed"),
        (certificate(3, WEIGHTS + 1), "certifies other weights"),
        (certificate(3, round_=5), "is for round 5, not 4"),
    ],
)
def test_model_check_reports_a_forged_or_insufficient_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cert: CommitCertificate, message: str
) -> None:
    roster = write_roster(tmp_path / "roster.json", *IDS)
    out = export(tmp_path, cert)
    assert main(["model", "check", str(out), "--roster", str(roster)]) == 2
    assert message in capsys.readouterr().err


def test_model_check_without_a_certificate_fails_when_one_is_demanded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    roster = write_roster(tmp_path / "roster.json", *IDS)
    out = export(tmp_path, None)
    assert main(["model", "check", str(out), "--roster", str(roster)]) == 1
    assert "no commit certificate" in capsys.readouterr().out


def write_log(path: Path, summaries: dict[int, dict[str, object]]) -> Path:
    with AuditLog(path, IDS[0], salt=SALT, clock=FakeClock()) as log:
        for rnd, summary in summaries.items():
            log.model_version(
                rnd, model_hash=model_hash_for(rnd), parent_hash=None, certificate=summary
            )
    return path


def test_audit_compare_reports_certificates_short_of_quorum_or_in_disagreement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = certificate(2).summary()
    a = write_log(tmp_path / "a.jsonl", {4: good})
    b = write_log(tmp_path / "b.jsonl", {4: good})
    assert main(["audit", "compare", str(a), str(b)]) == 0
    capsys.readouterr()
    short = write_log(tmp_path / "short.jsonl", {4: good | {"signers": 1}})
    assert main(["audit", "compare", str(a), str(short)]) == 1
    assert "1 signers of 3 contributors, 2 needed" in capsys.readouterr().out
    other = write_log(tmp_path / "other.jsonl", {4: certificate(2, WEIGHTS * 2).summary()})
    assert main(["audit", "compare", str(a), str(other)]) == 1
    assert "2 different certified statements" in capsys.readouterr().out


# -- a certificate that came after its round ----------------------------------------------

TENSORS = tensors_from_flat(["w"], [(6,)], WEIGHTS)


def late_record(tmp_path: Path) -> tuple[GovernanceRecorder, Path]:
    """A member whose round-4 model was stored without a certificate (the votes came late)."""
    log = tmp_path / "audit.jsonl"
    recorder = GovernanceRecorder(
        AuditLog(log, IDS[0], salt=SALT, clock=FakeClock()), ModelRegistry(tmp_path / "models")
    )
    recorder.registry.add(4, TENSORS, parent_hash=None)
    return recorder, log


def test_a_late_certificate_is_stored_beside_its_model_audited_and_verifiable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder, log = late_record(tmp_path)
    cert = certificate(2)
    manifest = recorder.certified_late(4, TENSORS, cert)
    recorder.audit.close()
    assert manifest is not None and manifest.round == 4
    stored = recorder.registry.certificate_file(manifest)
    assert CommitCertificate.from_dict(json.loads(stored.read_text())) == cert
    # model check verifies the export's certificate against the roster, as for one in time.
    roster = write_roster(tmp_path / "roster.json", *IDS)
    out = tmp_path / "model.pt"
    recorder.registry.export("latest", out)
    assert main(["model", "check", str(out), "--roster", str(roster)]) == 0
    assert "certified: 2 of 3 contributors signed round 4" in capsys.readouterr().out
    # The audit log records it (signed and chained like every entry), with what it proves.
    assert verify_log(log, members=KEYS).ok
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["kind"] for e in entries] == ["model_certified"]
    body = entries[0]["body"]
    assert body == {
        "round": 4,
        "model_hash": manifest.model_hash,
        "stored": True,
        "certificate": cert.summary(),
    }
    assert not any(p in json.dumps(body) for p in KEYS)  # the summary names no peer


def test_a_late_certificate_for_a_model_not_stored_here_is_audited_as_not_stored(
    tmp_path: Path,
) -> None:
    recorder, log = late_record(tmp_path)
    caught_up = tensors_from_flat(["w"], [(6,)], WEIGHTS * 3)  # taken by model sync
    assert recorder.certified_late(5, caught_up, certificate(2, WEIGHTS * 3, 5)) is None
    recorder.audit.close()
    (entry,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert entry["body"]["stored"] is False and entry["body"]["round"] == 5
    assert [m.round for m in recorder.registry.versions()] == [4]
    assert not recorder.registry.certificate_file(recorder.registry.resolve("4")).exists()


def test_a_late_certificate_never_replaces_the_one_stored_with_the_model(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    first = certificate(3)
    manifest = registry.add(4, TENSORS, parent_hash=None, certificate=first.to_dict())
    assert registry.attach_certificate(4, manifest.model_hash, certificate(2).to_dict())
    stored = json.loads(registry.certificate_file(manifest).read_text())
    assert CommitCertificate.from_dict(stored) == first


def test_audit_compare_reads_late_certificates_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log whose round-4 certificate came late still shows a disagreement or a shortfall."""
    a = write_log(tmp_path / "a.jsonl", {4: certificate(2).summary()})
    for name, cert, message in [
        ("other", certificate(2, WEIGHTS * 2), "2 different certified statements"),
        ("short", certificate(1), "1 signers of 3 contributors, 2 needed"),
    ]:
        recorder = GovernanceRecorder(
            AuditLog(tmp_path / f"{name}.jsonl", IDS[1], salt=SALT, clock=FakeClock()),
            ModelRegistry(tmp_path / f"models-{name}"),
        )
        recorder.certified_late(4, tensors_from_flat(["w"], [(6,)], WEIGHTS * 2), cert)
        recorder.audit.close()
        assert main(["audit", "compare", str(a), str(tmp_path / f"{name}.jsonl")]) == 1
        assert message in capsys.readouterr().out
