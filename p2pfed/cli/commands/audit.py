"""``p2pfed audit verify | compare | show``: check audit logs, compare members', read one."""

from __future__ import annotations

import argparse
import sys

from p2pfed.output import print_json

NAME = "audit"
HELP = "Verify a node's signed audit log, or compare members' logs round by round."


def register(parser: argparse.ArgumentParser) -> None:
    """Add ``verify`` and ``compare``."""
    from p2pfed.cli import add_group

    sub = add_group(parser)
    ver = sub.add_parser(
        "verify",
        help="Check signatures, sequence and hash chain; name the first bad entry.",
    )
    ver.add_argument("log", help="the audit log (JSONL)")
    trust = ver.add_mutually_exclusive_group()
    trust.add_argument("--roster", help="roster file: the signer must be a member with its key")
    trust.add_argument("--public-key", help="the signer's Ed25519 public key (64 hex digits)")
    ver.add_argument("--json", action="store_true", help="print JSON")
    ver.set_defaults(func=_verify)

    cmp = sub.add_parser("compare", help="Check that members agree on every round's model hash.")
    cmp.add_argument("logs", nargs="+", metavar="LOG", help="two or more members' audit logs")
    cmp.add_argument("--roster", help="roster file: every signer must be a member with its key")
    cmp.add_argument("--json", action="store_true", help="print JSON")
    cmp.set_defaults(func=_compare)

    show = sub.add_parser("show", help="Print a log's entries (after verifying it).")
    show.add_argument("log", help="the audit log (JSONL)")
    show.add_argument("--kind", action="append", default=[], help="only this kind (repeatable)")
    show.add_argument("--round", type=int, help="only entries about this round")
    show.add_argument("--json", action="store_true", help="print the entries as JSON lines")
    show.set_defaults(func=_show)


def _public_key(text: str) -> bytes:
    from p2pfed.errors import ConfigError

    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"--public-key {text!r} is not 64 hex digits (an Ed25519 public key)")
    return key


def _verify(args: argparse.Namespace) -> int:
    from p2pfed.governance.audit import roster_members, verify_log

    members = roster_members(args.roster) if args.roster else None
    key = _public_key(args.public_key) if args.public_key else None
    report = verify_log(args.log, public_key=key, members=members)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.summary())
        if report.ok and report.trust == "self":
            print("note: the signer was not checked against a roster or --public-key")
    return 0 if report.ok else 1


def _compare(args: argparse.Namespace) -> int:
    from p2pfed.governance.audit import compare_logs, roster_members
    from p2pfed.governance.certified import compare_certificates

    members = roster_members(args.roster) if args.roster else None
    report = compare_logs(args.logs, members=members)
    verified = [log for log in args.logs if str(log) not in report.unverified]
    problems = compare_certificates(verified)
    ok = report.ok and not problems
    if args.json:
        print_json(report.to_dict() | {"ok": ok, "certificate_problems": problems})
        return 0 if ok else 1
    for problem in problems:
        print(f"CERTIFICATE: {problem}")
    for why in report.unverified.values():
        print(f"not compared (failed verification): {why}")
    for name, rounds in report.missing.items():
        print(f"{name}: no model_version entry for round(s) {_ranges(rounds)}")
    first = report.first_disagreement
    if first is not None:
        groups = "; ".join(
            f"{h[:16]}… in {', '.join(logs)}" for h, logs in sorted(first.hashes.items())
        )
        print(f"DISAGREE at round {first.round}: {groups}")
        if len(report.disagreements) > 1:
            print(f"({len(report.disagreements)} rounds disagree in all)")
    elif not report.unverified and not problems:
        print(
            f"OK: {len(args.logs)} logs agree on all {report.agreed} round(s) recorded by "
            f"two or more of them ({report.rounds} round(s) in all)"
        )
    return 0 if ok else 1


def _ranges(rounds: list[int]) -> str:
    parts: list[str] = []
    start = prev = rounds[0]
    for r in [*rounds[1:], None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if r is not None:
            start = prev = r
    return ", ".join(parts)


def _show(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime
    from pathlib import Path

    from p2pfed.errors import ConfigError
    from p2pfed.governance.audit import EntryKind, verify_log

    kinds = set(args.kind)
    unknown = kinds - {k.value for k in EntryKind}
    if unknown:
        names = ", ".join(k.value for k in EntryKind)
        raise ConfigError(f"--kind {sorted(unknown)[0]!r} is not one of {names}")
    report = verify_log(args.log)
    # Entries past the first bad one are not shown: they cannot be trusted.
    lines = Path(args.log).read_bytes().splitlines()[: report.entries]
    for raw in lines:
        entry = json.loads(raw)
        body = entry["body"]
        if kinds and entry["kind"] not in kinds:
            continue
        if args.round is not None and body.get("round") != args.round:
            continue
        if args.json:
            print(json.dumps(entry, sort_keys=True))
            continue
        when = datetime.fromtimestamp(entry["ts"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        detail = " ".join(f"{k}={_short(v)}" for k, v in sorted(body.items()))
        print(f"{entry['seq']:>6} {when} {entry['kind']:<14} {detail}")
    print(report.summary(), file=sys.stderr)
    return 0 if report.ok else 1


def _short(value: object) -> str:
    if isinstance(value, list):
        return f"[{len(value)} items]"
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "…"
    return str(value)
