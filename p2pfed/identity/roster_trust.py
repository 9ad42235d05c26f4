"""Which roster a peer accepts, what it remembers of it, and the live admission check.

Theory of operation: a peer accepts a roster (``check_roster``/``RosterStore.accept``) only if:

1. at least m *distinct* admin keys of that roster signed it (unknown signers, repeated and
   invalid signatures do not count; when too few are valid and an admin's signature does not
   verify, the body was changed after signing: *tampered*, else *under-signed*);
2. it is for the same consortium as the roster accepted before;
3. its version is not lower than the highest accepted before (*rolled back*), and a
   version equal to it is the very same document;
4. a newer version is *also* signed by the threshold of the previously accepted roster's
   admins, so no admin alone, and no new admin set alone, can take the consortium over;
5. it has not expired at ``now`` (a clock the caller passes in).

What was accepted (consortium, version, body digest, admins, threshold) is remembered in a
small state file, written atomically with fsync, so rollback protection survives restarts.
A member removed in version v is absent from v's member list, and a peer holding v never
goes back below v, so ``Roster.is_member`` refuses it from v on. The first roster a peer
sees is trusted on first use: compare its admin keys out of band (``p2pfed roster verify``
prints them). ``RosterGate`` is the live check a transport calls for every connection and
stream: listed in the newest accepted roster, and that roster not expired by the clock.

Errors: ``RosterError`` (a ``ConfigError``) with a ``RosterProblem`` naming the kind of
refusal, and one sentence naming what was wrong; ``IntegrityError`` for a corrupted state
file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from p2pfed.durable import write_json
from p2pfed.errors import IntegrityError
from p2pfed.identity.keys import PUBLIC_KEY_SIZE
from p2pfed.identity.roster import Roster
from p2pfed.identity.roster_fields import (
    RosterError,
    RosterProblem,
    check_aware,
    check_name,
    format_time,
    hex_bytes,
    json_int,
    json_object,
    json_text,
    malformed,
)

STATE_FORMAT = "p2pfed-roster-state/1"


@dataclass(frozen=True, slots=True)
class AcceptedRoster:
    """What a peer remembers of the newest roster it accepted."""

    consortium_id: str
    version: int
    digest: str
    admins: tuple[bytes, ...]
    threshold: int

    @classmethod
    def of(cls, roster: Roster) -> AcceptedRoster:
        """The record of accepting ``roster``."""
        return cls(
            roster.consortium_id,
            roster.version,
            roster.digest(),
            roster.admins,
            roster.threshold,
        )


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class SignedDocument(Protocol):
    """A document admins sign m-of-n: the roster, the study protocol."""

    def valid_signers(self, keys: Iterable[bytes]) -> set[bytes]: ...

    def bad_signers(self, keys: Iterable[bytes]) -> set[bytes]: ...


def check_signed(
    document: SignedDocument, admins: tuple[bytes, ...], threshold: int, whose: str, what: str
) -> None:
    """Raise ``RosterError`` unless ``threshold`` of ``admins`` validly signed ``document``.

    ``whose`` names the admins ("its own", "the roster's"), ``what`` the document.
    """
    valid = len(document.valid_signers(admins))
    if valid >= threshold:
        # Enough distinct valid signatures: a stray invalid one does not count, as an
        # unknown signer does not.
        return
    bad = document.bad_signers(admins)
    if bad:
        raise RosterError(
            RosterProblem.TAMPERED,
            f"{what} was changed after it was signed: the signature "
            f"of {whose} admin {sorted(bad)[0].hex()[:16]}… does not match its content",
        )
    raise RosterError(
        RosterProblem.UNDER_SIGNED,
        f"{what} carries {_count(valid, 'valid signature')} of "
        f"{whose} admins; {threshold} of {len(admins)} are required",
    )


def check_roster(roster: Roster, *, now: datetime, accepted: AcceptedRoster | None) -> None:
    """Raise ``RosterError`` unless a peer that accepted ``accepted`` may accept ``roster``.

    See the module docstring for the rules, checked in that order.
    """
    check_aware(now, "now")
    check_signed(
        roster, roster.admins, roster.threshold, "its own", f"roster version {roster.version}"
    )
    if accepted is not None:
        if roster.consortium_id != accepted.consortium_id:
            raise RosterError(
                RosterProblem.WRONG_CONSORTIUM,
                f"roster is for consortium {roster.consortium_id!r}, but this peer belongs to "
                f"{accepted.consortium_id!r}",
            )
        if roster.version < accepted.version:
            raise RosterError(
                RosterProblem.ROLLED_BACK,
                f"roster version {roster.version} is older than version {accepted.version} "
                f"accepted before; refusing to roll back",
            )
        if roster.version == accepted.version and roster.digest() != accepted.digest:
            raise RosterError(
                RosterProblem.CONFLICT,
                f"roster version {roster.version} differs from the version {accepted.version} "
                f"accepted before; a changed roster needs a new version",
            )
        if roster.version > accepted.version:
            check_signed(
                roster,
                accepted.admins,
                accepted.threshold,
                "the previous",
                f"roster version {roster.version}",
            )
    if roster.is_expired(now):
        raise RosterError(
            RosterProblem.EXPIRED,
            f"roster version {roster.version} expired at {format_time(roster.expires_at)} "
            f"(now {format_time(now)}); the admins must sign a renewed version",
        )


class RosterStore:
    """The state file remembering the newest accepted roster, across restarts."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> AcceptedRoster | None:
        """The accepted record, or ``None`` if this peer never accepted a roster.

        Raises ``IntegrityError`` if the state file exists but is damaged: resetting it
        silently would re-open the door to rolled-back rosters.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"cannot read roster state file {self.path}: {exc}") from None
        try:
            data = json.loads(text)
            fields = json_object(
                data,
                "state",
                {"format", "consortium_id", "version", "digest", "admins", "threshold"},
            )
            if fields["format"] != STATE_FORMAT:
                raise malformed(f"unknown format {fields['format']!r}")
            return AcceptedRoster(
                check_name(fields["consortium_id"], "consortium id"),
                json_int(fields["version"], "version"),
                json_text(fields["digest"], "digest"),
                tuple(hex_bytes(k, PUBLIC_KEY_SIZE, "admin key") for k in fields["admins"]),
                json_int(fields["threshold"], "threshold"),
            )
        except (ValueError, TypeError, RosterError) as exc:
            raise IntegrityError(
                f"roster state file {self.path} is damaged ({exc}); restore it from a backup "
                f"rather than deleting it"
            ) from None

    def save(self, accepted: AcceptedRoster) -> None:
        """Record ``accepted`` atomically (temp file, fsync, rename)."""
        document = {
            "format": STATE_FORMAT,
            "consortium_id": accepted.consortium_id,
            "version": accepted.version,
            "digest": accepted.digest,
            "admins": [k.hex() for k in accepted.admins],
            "threshold": accepted.threshold,
        }
        write_json(self.path, document, 0o600)

    def check(self, roster: Roster, *, now: datetime) -> None:
        """Raise ``RosterError`` if this peer may not accept ``roster``; records nothing."""
        check_roster(roster, now=now, accepted=self.load())

    def accept(self, roster: Roster, *, now: datetime) -> Roster:
        """Check ``roster`` and, if it is newer, record it; returns it for chaining."""
        accepted = self.load()
        check_roster(roster, now=now, accepted=accepted)
        if accepted is None or roster.version > accepted.version:
            self.save(AcceptedRoster.of(roster))
        return roster


def load_roster(
    path: str | os.PathLike[str], *, state: str | os.PathLike[str], now: datetime
) -> Roster:
    """Read the roster at ``path`` and accept it against the state file ``state``."""
    return RosterStore(state).accept(Roster.load(path), now=now)


class RosterGate:
    """The live admission check a transport calls (a ``PeerGate``) for each peer.

    A peer is admitted while it is listed in the newest accepted roster *and* that roster
    has not expired by the injected ``clock``: a consortium whose admins stop renewing the
    roster stops admitting anyone, rather than running on stale membership. ``update``
    accepts a newer roster through the ``RosterStore``, so the gate never moves backwards.
    """

    def __init__(self, store: RosterStore, roster: Roster, clock: Callable[[], datetime]) -> None:
        store.check(roster, now=clock())
        self._store = store
        self._roster = roster
        self._clock = clock

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        state: str | os.PathLike[str],
        clock: Callable[[], datetime],
    ) -> RosterGate:
        """Load and accept the roster at ``path`` against ``state``; the gate over it."""
        store = RosterStore(state)
        return cls(store, store.accept(Roster.load(path), now=clock()), clock)

    @property
    def roster(self) -> Roster:
        """The roster currently in force."""
        return self._roster

    def now(self) -> datetime:
        """The time by the gate's clock (what expiry is judged against)."""
        return self._clock()

    def __call__(self, peer_id: str) -> bool:
        return not self._roster.is_expired(self._clock()) and self._roster.is_member(peer_id)

    def update(self, roster: Roster) -> None:
        """Accept ``roster`` (raising ``RosterError`` if refused) and enforce it from now on."""
        self._roster = self._store.accept(roster, now=self._clock())
