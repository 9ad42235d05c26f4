"""The privacy ledger's line format: records, heads, checksums and the hash chain.

Each line is ``<sha256-hex-prefix> <json>``; the chain hash over the header and each later
line is what ``LedgerHead`` carries into checkpoints and audit entries (see
``p2pfed.privacy.ledger`` for how they are used).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from p2pfed.canonical import canonical_json
from p2pfed.errors import ConfigError, IntegrityError
from p2pfed.privacy import validate
from p2pfed.privacy.accountants import MECHANISM
from p2pfed.privacy.mechanisms import NoiseMode

LEDGER_FORMAT = 2
_CHAIN_DOMAIN = b"p2pfed privacy ledger chain v2\0"
RECOVER_HINT = "run `p2pfed privacy recover --config FILE` (it never lowers the spend)"
_HASH_HEX = 32  # 128 bits of SHA-256: corruption detection, not tamper-proofing (audit log)


@dataclass(frozen=True, slots=True)
class Release:
    """One release of a noised update: what the accountant needs, and how it was made."""

    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    mode: NoiseMode

    def __post_init__(self) -> None:
        # normalised to plain int/float so numpy scalars serialise like Python numbers
        checked = {
            "round": validate.count("round", self.round, minimum=0),
            "noise_multiplier": validate.noise_multiplier(self.noise_multiplier),
            "sample_rate": validate.sample_rate(self.sample_rate),
            "steps": validate.count("steps", self.steps),
            "clip_norm": validate.clip_norm(self.clip_norm),
            "mode": NoiseMode(self.mode),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """A release as written: its sequence number and when it was reserved."""

    seq: int
    timestamp: float
    release: Release


@dataclass(frozen=True, slots=True)
class LedgerHead:
    """Where a ledger stands: releases recorded, chain hash after the last, ε so far."""

    seq: int
    chain: str
    epsilon: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as written into checkpoints and audit entries."""
        return {"seq": self.seq, "chain": self.chain, "epsilon": self.epsilon}

    @classmethod
    def from_dict(cls, value: object, where: str) -> LedgerHead:
        """Parse ``to_dict``'s form; ``IntegrityError`` naming ``where`` otherwise."""
        if isinstance(value, dict):
            seq, chain, eps = value.get("seq"), value.get("chain"), value.get("epsilon")
            if (
                isinstance(seq, int)
                and not isinstance(seq, bool)
                and seq >= 0
                and isinstance(chain, str)
                and len(chain) == 64
                and isinstance(eps, int | float)
                and math.isfinite(eps)
            ):
                return cls(seq, chain, float(eps))
        raise IntegrityError(f"{where} holds a malformed privacy ledger head {value!r}")


@dataclass(frozen=True, slots=True)
class Anchor:
    """A ledger head recorded elsewhere (checkpoint, audit log), and where."""

    head: LedgerHead
    source: str


def encode_line(body: dict[str, Any]) -> bytes:
    """One ledger line: checksum, space, canonical JSON, newline."""
    payload = canonical_json(body)
    return hashlib.sha256(payload).hexdigest()[:_HASH_HEX].encode() + b" " + payload + b"\n"


def payload_of(line: bytes) -> bytes:
    """The JSON bytes of an encoded line (the part the chain covers)."""
    return line.partition(b" ")[2].rstrip(b"\n")


def chain_start(header_line: bytes) -> str:
    """The chain hash before the first release: over the header's JSON."""
    return hashlib.sha256(_CHAIN_DOMAIN + payload_of(header_line)).hexdigest()


def chain_next(chain: str, line: bytes) -> str:
    """SHA-256(previous chain ‖ this line's JSON), in hex."""
    return hashlib.sha256(bytes.fromhex(chain) + payload_of(line)).hexdigest()


def decode_line(line: bytes, where: str) -> dict[str, Any]:
    """Check and parse one line (without its newline); raises IntegrityError."""
    digest, sep, payload = line.partition(b" ")
    if not sep or len(digest) != _HASH_HEX:
        raise IntegrityError(f"{where} is malformed (no checksum prefix)")
    if hashlib.sha256(payload).hexdigest()[:_HASH_HEX].encode() != digest:
        raise IntegrityError(f"{where} fails its checksum (corrupted)")
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{where} is not valid JSON despite a valid checksum") from exc
    if not isinstance(body, dict):
        raise IntegrityError(f"{where} is not a JSON object")
    return body


def record_from(body: dict[str, Any], where: str) -> LedgerRecord:
    """The release record a decoded line holds; ``IntegrityError`` naming ``where``."""
    try:
        if body.get("type") != "release":
            raise IntegrityError(f"{where} has type {body.get('type')!r}, expected 'release'")
        release = Release(
            round=body["round"],
            noise_multiplier=body["noise_multiplier"],
            sample_rate=body["sample_rate"],
            steps=body["steps"],
            clip_norm=body["clip_norm"],
            mode=NoiseMode(body["mode"]),
        )
        seq, ts = body["seq"], body["timestamp"]
        if not isinstance(seq, int) or not isinstance(ts, int | float):
            raise IntegrityError(f"{where} has a bad seq or timestamp")
        return LedgerRecord(seq, float(ts), release)
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise IntegrityError(f"{where} is not a valid release record: {exc}") from exc


def record_body(record: LedgerRecord, prev: str) -> dict[str, Any]:
    """The JSON body of a release record chained after ``prev``."""
    r = record.release
    return {
        "type": "release",
        "prev": prev,
        "seq": record.seq,
        "timestamp": record.timestamp,
        **{k: v for k, v in asdict(r).items() if k != "mode"},
        "mode": str(r.mode),
    }


def header_line(**extra: Any) -> bytes:
    """The encoded header of a new ledger (``extra``: e.g. what a recovery restored)."""
    return encode_line({"type": "header", "format": LEDGER_FORMAT, "mechanism": MECHANISM, **extra})


def encode_records(header: bytes, records: list[LedgerRecord]) -> bytes:
    """A whole ledger file: ``header`` then ``records`` chained after it."""
    chain, out = chain_start(header), [header]
    for record in records:
        line = encode_line(record_body(record, chain))
        chain = chain_next(chain, line)
        out.append(line)
    return b"".join(out)


def refuse_missing(ledger: object, heads: Sequence[Anchor], evidence: Sequence[str] = ()) -> None:
    """``IntegrityError`` if ``ledger`` is absent although an anchor or evidence shows spend."""
    spent = [a for a in heads if a.head.seq > 0]
    if spent:
        a = max(spent, key=lambda x: x.head.seq)
        raise IntegrityError(
            f"privacy ledger {ledger} is missing but {a.source} records "
            f"{a.head.seq} release(s) (ε {a.head.epsilon:.4g}); restore the ledger from "
            f"a backup or {RECOVER_HINT}"
        )
    if evidence:
        raise IntegrityError(
            f"privacy ledger {ledger} is missing but {evidence[0]} shows privacy was "
            f"spent; restore the ledger from a backup or {RECOVER_HINT}"
        )
