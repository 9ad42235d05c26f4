import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.canonical import canonical_json
from p2pfed.errors import ConfigError, IntegrityError
from p2pfed.identity import (
    AcceptedRoster,
    Identity,
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
from p2pfed.identity.roster_fields import check_multiaddr

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=365)


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


ADMINS = [ident(100 + i) for i in range(3)]
PEERS = [ident(i) for i in range(5)]


def member(i: int, **kw: object) -> Member:
    return Member.from_public_key(
        f"hospital-{i}",
        PEERS[i].public_key,
        [f"/ip4/10.0.0.{i + 1}/tcp/4001"],
        **kw,  # type: ignore[arg-type]
    )


def roster(n_members: int = 3, admins: int = 1, threshold: int = 1, version: int = 1) -> Roster:
    return Roster(
        consortium_id="eu-cardio",
        version=version,
        expires_at=LATER,
        members=tuple(member(i) for i in range(n_members)),
        admins=tuple(a.public_key for a in ADMINS[:admins]),
        threshold=threshold,
    )


def signed(r: Roster, *signers: Identity) -> Roster:
    for s in signers:
        r = r.signed_by(s)
    return r


def problem(r: Roster, accepted: AcceptedRoster | None = None, now: datetime = NOW) -> str:
    with pytest.raises(RosterError) as info:
        check_roster(r, now=now, accepted=accepted)
    assert str(info.value)
    return info.value.problem


# --- documents ----------------------------------------------------------------------------


def test_json_round_trip_and_canonical_body() -> None:
    r = signed(roster(), ADMINS[0])
    text = r.to_json()
    back = Roster.from_json(text)
    assert back == r
    assert back.digest() == r.digest()
    body = r.canonical_body()
    assert b" " not in body and b"\n" not in body
    assert body == canonical_json(json.loads(text)["body"])
    keys = list(json.loads(body))
    assert keys == sorted(keys)
    check_roster(back, now=NOW, accepted=None)


def test_signature_survives_reformatting() -> None:
    r = signed(roster(), ADMINS[0])
    document = json.loads(r.to_json())
    reformatted = json.dumps(document, indent=7)  # any layout, same content
    check_roster(Roster.from_json(reformatted), now=NOW, accepted=None)


@settings(max_examples=30, deadline=None)
@given(
    names=st.lists(
        st.from_regex(r"[a-z]([a-z0-9-]{0,18}[a-z0-9])?", fullmatch=True), unique=True, max_size=5
    ),
    days=st.integers(1, 5000),
    version=st.integers(1, 10**6),
)
def test_any_roster_round_trips_and_verifies(names: list[str], days: int, version: int) -> None:
    members = tuple(
        Member.from_public_key(name, ident(i).public_key, [f"/dns4/{name}.example/tcp/4001"])
        for i, name in enumerate(names)
    )
    r = Roster("c", version, NOW + timedelta(days=days), members, (ADMINS[0].public_key,))
    r = r.signed_by(ADMINS[0])
    back = Roster.from_json(r.to_json())
    assert back == r
    check_roster(back, now=NOW, accepted=None)


def test_edits_bump_version_and_clear_signatures() -> None:
    r = signed(roster(), ADMINS[0])
    added = r.with_member(member(3))
    assert (added.version, added.signatures) == (2, ())
    removed = added.without_member("hospital-0")
    assert removed.version == 3 and not removed.is_member(PEERS[0].peer_id)
    removed_by_id = added.without_member(PEERS[1].peer_id)
    assert not removed_by_id.is_member(PEERS[1].peer_id)
    with pytest.raises(ConfigError, match="no member"):
        r.without_member("nobody")
    renewed = r.with_expiry(LATER + timedelta(days=1))
    assert renewed.version == 2 and renewed.expires_at == LATER + timedelta(days=1)
    with pytest.raises(ConfigError, match="already signed"):
        r.signed_by(ADMINS[0])


def test_membership_queries() -> None:
    r = roster()
    assert r.is_member(PEERS[0].peer_id)
    assert not r.is_member(PEERS[4].peer_id)
    found = r.member(PEERS[1].peer_id)
    assert found is not None and found.name == "hospital-1" and found.role is Role.MEMBER
    assert member(2, role="observer").role is Role.OBSERVER


# --- acceptance rules ---------------------------------------------------------------------


def test_unsigned_and_under_signed() -> None:
    assert problem(roster()) == RosterProblem.UNDER_SIGNED
    two_of_three = roster(admins=3, threshold=2)
    assert problem(signed(two_of_three, ADMINS[0])) == RosterProblem.UNDER_SIGNED
    check_roster(signed(two_of_three, ADMINS[0], ADMINS[2]), now=NOW, accepted=None)


def test_unknown_signers_and_duplicates_do_not_count() -> None:
    r = roster(admins=3, threshold=2)
    outsider = signed(r, ADMINS[0], PEERS[0])  # a member is not an admin
    assert problem(outsider) == RosterProblem.UNDER_SIGNED
    once = signed(r, ADMINS[0])
    twice = dataclasses.replace(once, signatures=once.signatures * 2)
    assert problem(twice) == RosterProblem.UNDER_SIGNED
    with pytest.raises(RosterError, match="1 valid signature of its own admins; 2 of 3"):
        check_roster(twice, now=NOW, accepted=None)


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    r = signed(roster(), ADMINS[0])
    document = json.loads(r.to_json())
    document["body"]["members"][0]["addresses"] = ["/ip4/203.0.113.66/tcp/4001"]
    path = tmp_path / "roster.json"
    path.write_text(json.dumps(document))
    with pytest.raises(RosterError) as info:
        load_roster(path, state=tmp_path / "state.json", now=NOW)
    assert info.value.problem is RosterProblem.TAMPERED
    assert "changed after it was signed" in str(info.value)
    assert not (tmp_path / "state.json").exists()


def test_tampered_member_swap_is_refused() -> None:
    r = signed(roster(), ADMINS[0])
    swapped = dataclasses.replace(r, members=(*r.members[:2], member(4)))
    assert problem(swapped) == RosterProblem.TAMPERED


def test_expiry_uses_the_injected_clock() -> None:
    r = signed(roster(), ADMINS[0])
    check_roster(r, now=LATER - timedelta(seconds=1), accepted=None)
    assert problem(r, now=LATER) == RosterProblem.EXPIRED
    with pytest.raises(RosterError, match="expired at 2027-11-27T12:00:00Z"):
        check_roster(r, now=LATER + timedelta(days=1), accepted=None)
    with pytest.raises(ConfigError, match="timezone-aware"):
        check_roster(r, now=datetime(2026, 1, 1), accepted=None)


def test_rollback_is_refused_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    v1 = signed(roster(), ADMINS[0])
    v2 = signed(v1.without_member("hospital-2"), ADMINS[0])
    RosterStore(state).accept(v1, now=NOW)
    RosterStore(state).accept(v2, now=NOW)
    # A fresh store (a restarted peer) still refuses version 1.
    with pytest.raises(RosterError) as info:
        RosterStore(state).accept(v1, now=NOW)
    assert info.value.problem is RosterProblem.ROLLED_BACK
    assert "older than version 2" in str(info.value)
    # The removed member stays refused from version 2 on.
    current = RosterStore(state).accept(v2, now=NOW)
    assert not current.is_member(PEERS[2].peer_id)
    assert current.is_member(PEERS[0].peer_id)
    assert RosterStore(state).load() == AcceptedRoster.of(v2)


def test_same_version_with_other_content_is_a_conflict(tmp_path: Path) -> None:
    store = RosterStore(tmp_path / "state.json")
    store.accept(signed(roster(n_members=3), ADMINS[0]), now=NOW)
    other = signed(roster(n_members=2), ADMINS[0])
    with pytest.raises(RosterError) as info:
        store.accept(other, now=NOW)
    assert info.value.problem is RosterProblem.CONFLICT


def test_wrong_consortium(tmp_path: Path) -> None:
    store = RosterStore(tmp_path / "state.json")
    store.accept(signed(roster(), ADMINS[0]), now=NOW)
    other = signed(dataclasses.replace(roster(version=5), consortium_id="other"), ADMINS[0])
    with pytest.raises(RosterError) as info:
        store.accept(other, now=NOW)
    assert info.value.problem is RosterProblem.WRONG_CONSORTIUM


def test_single_admin_cannot_take_over(tmp_path: Path) -> None:
    store = RosterStore(tmp_path / "state.json")
    v1 = signed(roster(admins=3, threshold=2), ADMINS[0], ADMINS[1])
    store.accept(v1, now=NOW)
    # Admin 0 alone makes itself the only admin (1-of-1) and adds an outsider.
    coup = v1.with_admins([ADMINS[0].public_key], 1).with_member(member(4))
    coup = signed(coup, ADMINS[0])
    with pytest.raises(RosterError) as info:
        store.accept(coup, now=NOW)
    assert info.value.problem is RosterProblem.UNDER_SIGNED
    assert "of the previous admins; 2 of 3 are required" in str(info.value)
    # Adding a member also needs two admins.
    lone_add = signed(v1.with_member(member(4)), ADMINS[2])
    assert problem(lone_add, store.load()) == RosterProblem.UNDER_SIGNED
    # With a second admin of the accepted roster the same change goes through.
    store.accept(signed(coup, ADMINS[1]), now=NOW)
    assert store.load() is not None and store.load().threshold == 1  # type: ignore[union-attr]


def test_admin_rotation_needs_the_old_admins(tmp_path: Path) -> None:
    store = RosterStore(tmp_path / "state.json")
    v1 = signed(roster(admins=1), ADMINS[0])
    store.accept(v1, now=NOW)
    rotated = v1.with_admins([ADMINS[1].public_key], 1)
    with pytest.raises(RosterError):
        store.accept(signed(rotated, ADMINS[1]), now=NOW)
    store.accept(signed(rotated, ADMINS[1], ADMINS[0]), now=NOW)
    # From now on only the new admin's signature is needed.
    v3 = signed(store_roster := rotated.with_member(member(3)), ADMINS[1])
    assert store_roster.version == 3
    store.accept(v3, now=NOW)


def test_check_does_not_record(tmp_path: Path) -> None:
    store = RosterStore(tmp_path / "state.json")
    store.check(signed(roster(), ADMINS[0]), now=NOW)
    assert store.load() is None


def test_damaged_state_is_an_integrity_error(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    with pytest.raises(IntegrityError, match="damaged"):
        RosterStore(state).load()
    state.write_text(json.dumps({"format": "p2pfed-roster-state/1"}))
    with pytest.raises(IntegrityError, match="lacks the field"):
        RosterStore(state).load()


# --- malformed documents ------------------------------------------------------------------


def mutate(path: list[object], value: object) -> str:
    document = json.loads(signed(roster(), ADMINS[0]).to_json())
    target = document
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    if value is KeyError:
        del target[path[-1]]  # type: ignore[arg-type]
    else:
        target[path[-1]] = value  # type: ignore[index]
    return json.dumps(document)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (mutate(["body", "version"], KeyError), "lacks the field 'version'"),
        (mutate(["body", "extra"], 1), "unexpected field 'extra'"),
        (mutate(["body", "format"], "v9"), "format"),
        (mutate(["body", "version"], "3"), "version must be an integer"),
        (mutate(["body", "version"], 0), "at least 1"),
        (mutate(["body", "threshold"], 2), "threshold 2 must be between 1 and"),
        (mutate(["body", "admins"], []), "at least one admin"),
        (mutate(["body", "expires_at"], "2027-01-01T00:00:00"), "UTC offset"),
        (mutate(["body", "expires_at"], "tomorrow"), "ISO 8601"),
        (mutate(["body", "consortium_id"], "has space"), "consortium id"),
        (mutate(["body", "members", 0, "peer_id"], PEERS[4].peer_id), "not the peer ID"),
        (mutate(["body", "members", 1, "name"], "hospital-0"), "listed twice"),
        (mutate(["body", "members", 0, "public_key"], "AB" * 32), "lowercase hex"),
        (mutate(["body", "members", 0, "role"], "king"), "role 'king'"),
        (mutate(["body", "members", 0, "addresses"], ["/ip4/1.2.3/tcp/1"]), "1.2.3"),
        (mutate(["signatures", 0, "signature"], "00"), "signature 1"),
    ],
)
def test_malformed_documents(text: str, match: str) -> None:
    with pytest.raises(RosterError, match=match) as info:
        Roster.from_json(text)
    assert info.value.problem is RosterProblem.MALFORMED


@pytest.mark.parametrize(
    "address",
    [
        "/ip4/192.0.2.7/tcp/4001",
        "/ip6/2001:db8::1/tcp/4001",
        "/dns4/node.hospital.example/tcp/4001",
        f"/ip4/192.0.2.7/tcp/4001/p2p/{PEERS[0].peer_id}",
    ],
)
def test_good_multiaddrs(address: str) -> None:
    assert check_multiaddr(address, PEERS[0].peer_id) == address


@pytest.mark.parametrize(
    "address",
    [
        "ip4/1.2.3.4/tcp/1",
        "/ip4/1.2.3.4/udp/1",
        "/ip4/1.2.3.4/tcp/0",
        "/ip4/1.2.3.4/tcp/65536",
        "/ip4/1.2.3.4/tcp/04001",
        "/ip4/::1/tcp/1",
        "/dns4/bad_host/tcp/1",
        "/http/x/tcp/1",
        f"/ip4/1.2.3.4/tcp/1/p2p/{PEERS[1].peer_id}",
        "/ip4/1.2.3.4/tcp/1/xyz/abc",
    ],
)
def test_bad_multiaddrs(address: str) -> None:
    with pytest.raises(RosterError):
        check_multiaddr(address, PEERS[0].peer_id)


def test_roster_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Roster.load(tmp_path / "missing.json")
    r = signed(roster(), ADMINS[0])
    r.save(tmp_path / "r.json")
    assert Roster.load(tmp_path / "r.json") == r


def test_roster_gate_follows_updates_and_expiry(tmp_path: Path) -> None:
    path, state = tmp_path / "roster.json", tmp_path / "state.json"
    v1 = signed(roster(), ADMINS[0])
    v1.save(path)
    clock = [NOW]
    gate = RosterGate.open(path, state=state, clock=lambda: clock[0])
    assert gate(PEERS[2].peer_id) and not gate(PEERS[4].peer_id)
    v2 = signed(v1.without_member("hospital-2"), ADMINS[0])
    gate.update(v2)
    assert gate.roster == v2 and not gate(PEERS[2].peer_id) and gate(PEERS[0].peer_id)
    with pytest.raises(RosterError):
        gate.update(v1)  # never moves backwards
    assert not gate(PEERS[2].peer_id)
    clock[0] = LATER
    assert not gate(PEERS[0].peer_id)  # an expired roster admits no one
    # A restarted peer cannot be handed the old roster either.
    with pytest.raises(RosterError):
        RosterGate(RosterStore(state), v1, clock=lambda: NOW)


def test_a_stray_bad_signature_does_not_spoil_enough_good_ones() -> None:
    r = signed(roster(admins=3, threshold=2), ADMINS[0], ADMINS[1])
    forged = RosterSignature(ADMINS[2].public_key, bytes(64))
    check_roster(dataclasses.replace(r, signatures=(*r.signatures, forged)), now=NOW, accepted=None)
    # With too few good signatures the bad one is reported as tampering.
    one = signed(roster(admins=3, threshold=2), ADMINS[0])
    assert problem(dataclasses.replace(one, signatures=(*one.signatures, forged))) == (
        RosterProblem.TAMPERED
    )
