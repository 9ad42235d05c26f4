"""``p2pfed roster init | add | remove | renew | admins | sign | verify``.

Theory of operation: each sub-command reads the roster file, makes one change and writes
it back atomically. Changes to the content (add, remove, renew, admins) produce the next
version with no signatures; ``sign`` appends one admin signature to the current version;
``verify`` checks signatures and expiry (and, with ``--state``, rollback against what this
peer accepted before) and prints a summary, or the one sentence saying why the roster is
refused (exit status 2). The real clock is read here, at the edge; ``--now`` overrides it
for audits and tests.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from p2pfed.errors import ConfigError

if TYPE_CHECKING:
    from p2pfed.identity import Roster

NAME = "roster"
HELP = "Create, edit, sign and verify the consortium roster."


def register(parser: argparse.ArgumentParser) -> None:
    """Add the roster sub-commands."""
    from p2pfed.cli import add_group

    sub = add_group(parser)

    init = sub.add_parser("init", help="create version 1 of a roster (unsigned)")
    init.add_argument("roster", metavar="ROSTER", help="roster file to create")
    init.add_argument("--consortium", required=True, help="consortium id, e.g. eu-cardio")
    _admin_args(init)
    _expiry_args(init)
    init.add_argument("--force", action="store_true", help="replace an existing roster file")
    init.set_defaults(func=run_init)

    add = sub.add_parser("add", help="add a member (next version, signatures cleared)")
    add.add_argument("roster", metavar="ROSTER")
    add.add_argument("--name", required=True, help="member name, e.g. st-olav")
    who = add.add_mutually_exclusive_group(required=True)
    who.add_argument("--peer-id", help="the member's peer ID (printed by p2pfed keygen)")
    who.add_argument("--public-key", help="the member's Ed25519 public key, 64 hex digits")
    add.add_argument(
        "--address",
        action="append",
        default=[],
        help="a multiaddr where the member listens, e.g. /dns4/fl.example.org/tcp/4001",
    )
    add.add_argument("--role", default="member", choices=["member", "observer", "relay"])
    add.set_defaults(func=run_add)

    remove = sub.add_parser("remove", help="remove a member (next version, signatures cleared)")
    remove.add_argument("roster", metavar="ROSTER")
    remove.add_argument("member", metavar="NAME_OR_PEER_ID")
    remove.set_defaults(func=run_remove)

    renew = sub.add_parser("renew", help="set a new expiry (next version, signatures cleared)")
    renew.add_argument("roster", metavar="ROSTER")
    _expiry_args(renew)
    renew.set_defaults(func=run_renew)

    admins = sub.add_parser(
        "admins",
        help="replace the admin set and threshold (next version; the current admins must "
        "sign it too)",
    )
    admins.add_argument("roster", metavar="ROSTER")
    _admin_args(admins)
    admins.set_defaults(func=run_admins)

    sign = sub.add_parser("sign", help="append your admin signature to the current version")
    sign.add_argument("roster", metavar="ROSTER")
    sign.add_argument("--key", required=True, help="your admin key file")
    sign.add_argument(
        "--previous-admin",
        action="store_true",
        help="sign although your key is not an admin of this version (an outgoing admin "
        "approving an admin change)",
    )
    sign.set_defaults(func=run_sign)

    verify = sub.add_parser("verify", help="check a roster and print a summary")
    verify.add_argument("roster", metavar="ROSTER")
    verify.add_argument(
        "--state",
        help="this peer's roster state file: also refuse rollbacks and admin takeovers",
    )
    verify.add_argument(
        "--accept", action="store_true", help="record the roster in --state if it is newer"
    )
    verify.add_argument("--now", help="check expiry at this UTC time instead of now (ISO 8601)")
    verify.set_defaults(func=run_verify)


def _admin_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin",
        action="append",
        default=[],
        help="an admin public key (64 hex digits) or peer ID; repeat for each admin",
    )
    parser.add_argument(
        "--admin-key",
        action="append",
        default=[],
        help="an admin key file (only its public key is used); repeatable",
    )
    parser.add_argument(
        "--threshold", type=int, default=1, help="signatures required (m of n; default 1)"
    )


def _expiry_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--expires", help="expiry as a UTC ISO 8601 time, e.g. 2027-12-31T00:00Z")
    group.add_argument(
        "--valid-days", type=int, default=365, help="expire this many days from now (365)"
    )


def _now(text: str | None = None) -> datetime:
    from p2pfed.identity import parse_time

    return datetime.now(UTC) if text is None else parse_time(text, "--now")


def _expiry(args: argparse.Namespace) -> datetime:
    from p2pfed.identity import parse_time

    if args.expires is not None:
        return parse_time(args.expires, "--expires")
    if args.valid_days < 1:
        raise ConfigError(f"--valid-days must be at least 1, not {args.valid_days}")
    return _now() + timedelta(days=args.valid_days)


def _public_key(text: str, what: str) -> bytes:
    from p2pfed.identity import public_key_from_peer_id

    value = text.strip()
    if len(value) == 64:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    if value.startswith("12D3KooW"):
        return public_key_from_peer_id(value)
    raise ConfigError(f"{what} {text!r} is neither 64 hex digits nor an Ed25519 peer ID")


def _admins(args: argparse.Namespace) -> list[bytes]:
    from p2pfed.identity import Identity

    keys = [_public_key(text, "--admin") for text in args.admin]
    keys += [Identity.load(path).public_key for path in args.admin_key]
    if not keys:
        raise ConfigError("name at least one admin with --admin or --admin-key")
    return keys


def _load(path: str) -> Roster:
    from p2pfed.identity import Roster

    return Roster.load(path)


def _saved(roster: Roster, path: str, what: str) -> int:
    roster.save(path)
    print(
        f"{path}: {what}; now version {roster.version} with {len(roster.members)} "
        f"member{'' if len(roster.members) == 1 else 's'}, unsigned (needs {roster.threshold} "
        f"admin signature{'' if roster.threshold == 1 else 's'})"
    )
    return 0


def run_init(args: argparse.Namespace) -> int:
    """Create version 1."""
    from p2pfed.identity import Roster

    roster = Roster(
        consortium_id=args.consortium,
        version=1,
        expires_at=_expiry(args),
        members=(),
        admins=tuple(_admins(args)),
        threshold=args.threshold,
    )
    roster.save(args.roster, overwrite=args.force)
    print(
        f"{args.roster}: created roster version 1 of {roster.consortium_id} "
        f"({roster.threshold}-of-{len(roster.admins)} admins), expiring "
        f"{roster.expires_at:%Y-%m-%dT%H:%M:%SZ}"
    )
    return 0


def run_add(args: argparse.Namespace) -> int:
    """Add a member."""
    from p2pfed.identity import Member

    roster = _load(args.roster)
    if args.peer_id is not None:
        key = _public_key(args.peer_id, "--peer-id")
    else:
        key = _public_key(args.public_key, "--public-key")
    member = Member.from_public_key(args.name, key, args.address, args.role)
    for existing in roster.members:
        if existing.name == member.name or existing.peer_id == member.peer_id:
            raise ConfigError(
                f"{existing.name} ({existing.peer_id}) is already in the roster; remove it first"
            )
    return _saved(roster.with_member(member), args.roster, f"added {member.name}")


def run_remove(args: argparse.Namespace) -> int:
    """Remove a member."""
    roster = _load(args.roster).without_member(args.member)
    return _saved(roster, args.roster, f"removed {args.member}")


def run_renew(args: argparse.Namespace) -> int:
    """Set a new expiry."""
    roster = _load(args.roster).with_expiry(_expiry(args))
    return _saved(roster, args.roster, f"expiry set to {roster.expires_at:%Y-%m-%dT%H:%M:%SZ}")


def run_admins(args: argparse.Namespace) -> int:
    """Replace the admin set."""
    roster = _load(args.roster).with_admins(_admins(args), args.threshold)
    return _saved(
        roster,
        args.roster,
        f"admins set to {roster.threshold}-of-{len(roster.admins)} (the previous admins must "
        f"sign too)",
    )


def run_sign(args: argparse.Namespace) -> int:
    """Append a signature."""
    from p2pfed.identity import Identity

    roster = _load(args.roster)
    identity = Identity.load(args.key)
    if identity.public_key not in roster.admins and not args.previous_admin:
        raise ConfigError(
            f"key {args.key} is not an admin of roster version {roster.version} "
            f"(use --previous-admin to approve an admin change as an outgoing admin)"
        )
    roster = roster.signed_by(identity)
    roster.save(args.roster)
    valid = len(roster.valid_signers(roster.admins))
    print(
        f"{args.roster}: signed version {roster.version}; {valid} of {roster.threshold} "
        f"required admin signatures"
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Check the roster; print a summary."""
    from p2pfed.identity import RosterStore, check_roster, format_time

    if args.accept and args.state is None:
        raise ConfigError("--accept needs --state, the file where acceptance is recorded")
    now = _now(args.now)
    roster = _load(args.roster)
    if args.state is None:
        check_roster(roster, now=now, accepted=None)
    elif args.accept:
        RosterStore(args.state).accept(roster, now=now)
    else:
        RosterStore(args.state).check(roster, now=now)
    valid = len(roster.valid_signers(roster.admins))
    days = (roster.expires_at - now).days
    print(f"roster {roster.consortium_id} version {roster.version}: valid")
    print(f"  expires   {format_time(roster.expires_at)} (in {days} days)")
    print(f"  signed    by {valid} of {len(roster.admins)} admins (threshold {roster.threshold})")
    print(f"  digest    sha256:{roster.digest()}")
    for key in roster.admins:
        print(f"  admin     {key.hex()}")
    print(f"  members   {len(roster.members)}")
    for m in roster.members:
        addresses = " ".join(m.addresses) or "(no address)"
        print(f"    {m.name:<20} {m.role.value:<8} {m.peer_id}  {addresses}")
    if args.accept:
        print(f"  recorded in {args.state}")
    return 0
