import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from p2pfed.cli import main
from p2pfed.identity import Identity, Roster, RosterStore


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keygen_writes_a_private_key_and_prints_its_peer_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.key"
    code, out, err = run(capsys, "keygen", str(path))
    assert code == 0
    identity = Identity.load(path)
    assert out.strip() == identity.peer_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "0600" in err

    code, out, err = run(capsys, "keygen", str(path))
    assert code == 2 and out == ""
    assert "already exists" in err and "--force" in err
    assert Identity.load(path) == identity

    code, out, _ = run(capsys, "keygen", str(path), "--force")
    assert code == 0 and out.strip() != identity.peer_id


def test_keygen_subprocess_smoke(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    result = subprocess.run(
        [sys.executable, "-m", "p2pfed", "keygen", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == Identity.load(path).peer_id


@pytest.fixture
def consortium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    """Two admins (2-of-2), two hospital keys, and an initialised roster."""
    paths = {name: tmp_path / f"{name}.key" for name in ("admin1", "admin2", "h1", "h2")}
    for path in paths.values():
        assert main(["keygen", str(path)]) == 0
    paths["roster"] = tmp_path / "roster.json"
    paths["state"] = tmp_path / "state.json"
    code = main(
        [
            "roster", "init", str(paths["roster"]), "--consortium", "eu-cardio",
            "--admin-key", str(paths["admin1"]),
            "--admin", Identity.load(paths["admin2"]).peer_id,
            "--threshold", "2", "--expires", "2027-06-01T00:00:00Z",
        ]
    )  # fmt: skip
    assert code == 0
    capsys.readouterr()
    return paths


def peer(paths: dict[str, Path], name: str) -> str:
    return Identity.load(paths[name]).peer_id


NOW = "2026-11-27T12:00:00Z"


def test_roster_lifecycle(consortium: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    r = str(consortium["roster"])
    code, out, _ = run(
        capsys, "roster", "add", r, "--name", "h1", "--peer-id", peer(consortium, "h1"),
        "--address", "/dns4/fl.h1.example/tcp/4001",
    )  # fmt: skip
    assert code == 0 and "version 2" in out
    h2_key = Identity.load(consortium["h2"]).public_key.hex()
    code, out, _ = run(capsys, "roster", "add", r, "--name", "h2", "--public-key", h2_key)
    assert code == 0 and "version 3" in out

    # Unsigned, then signed by one of two admins: refused as under-signed.
    code, _, err = run(capsys, "roster", "verify", r, "--now", NOW)
    assert code == 2 and "0 valid signatures" in err
    assert run(capsys, "roster", "sign", r, "--key", str(consortium["admin1"]))[0] == 0
    code, _, err = run(capsys, "roster", "verify", r, "--now", NOW)
    assert code == 2 and "1 valid signature of its own admins; 2 of 2 are required" in err

    code, out, _ = run(capsys, "roster", "sign", r, "--key", str(consortium["admin2"]))
    assert code == 0 and "2 of 2" in out
    state = str(consortium["state"])
    code, out, _ = run(capsys, "roster", "verify", r, "--now", NOW, "--state", state, "--accept")
    assert code == 0
    assert "eu-cardio version 3: valid" in out
    assert peer(consortium, "h1") in out and "/dns4/fl.h1.example/tcp/4001" in out
    assert "signed    by 2 of 2 admins" in out
    accepted = RosterStore(state).load()
    assert accepted is not None and accepted.version == 3

    # Keep version 3 to replay later, then remove h2 in version 4.
    v3 = consortium["roster"].read_text()
    code, out, _ = run(capsys, "roster", "remove", r, "h2")
    assert code == 0 and "version 4" in out
    for admin in ("admin1", "admin2"):
        assert run(capsys, "roster", "sign", r, "--key", str(consortium[admin]))[0] == 0
    assert run(capsys, "roster", "verify", r, "--now", NOW, "--state", state, "--accept")[0] == 0
    assert not Roster.load(r).is_member(peer(consortium, "h2"))

    # Replaying version 3 (h2 still listed) is a rollback.
    consortium["roster"].write_text(v3)
    code, _, err = run(capsys, "roster", "verify", r, "--now", NOW, "--state", state)
    assert code == 2 and "older than version 4" in err

    # Expiry.
    code, _, err = run(capsys, "roster", "verify", r, "--now", "2027-06-01T00:00:00Z")
    assert code == 2 and "expired at 2027-06-01T00:00:00Z" in err


def test_sign_refuses_a_non_admin_and_a_second_signature(
    consortium: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    r = str(consortium["roster"])
    code, _, err = run(capsys, "roster", "sign", r, "--key", str(consortium["h1"]))
    assert code == 2 and "not an admin" in err
    assert run(capsys, "roster", "sign", r, "--key", str(consortium["admin1"]))[0] == 0
    code, _, err = run(capsys, "roster", "sign", r, "--key", str(consortium["admin1"]))
    assert code == 2 and "already signed" in err


def test_tampered_roster_file(
    consortium: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    r = str(consortium["roster"])
    for admin in ("admin1", "admin2"):
        run(capsys, "roster", "sign", r, "--key", str(consortium[admin]))
    document = json.loads(consortium["roster"].read_text())
    document["body"]["expires_at"] = "2099-01-01T00:00:00Z"
    consortium["roster"].write_text(json.dumps(document))
    code, out, err = run(capsys, "roster", "verify", r, "--now", NOW)
    assert code == 2 and out == ""
    assert err.startswith("p2pfed: error: roster version 1 was changed after it was signed")
    assert err.count("\n") == 1


def test_renew_and_admin_change(
    consortium: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    r = str(consortium["roster"])
    code, out, _ = run(capsys, "roster", "renew", r, "--expires", "2028-01-01T00:00:00+01:00")
    assert code == 0 and "2027-12-31T23:00:00Z" in out
    code, out, _ = run(
        capsys, "roster", "admins", r, "--admin-key", str(consortium["admin1"]), "--threshold", "1"
    )
    assert code == 0 and "1-of-1" in out
    # admin2 is no longer an admin of this version but approves the change as outgoing admin.
    assert run(capsys, "roster", "sign", r, "--key", str(consortium["admin1"]))[0] == 0
    code, _, _ = run(
        capsys, "roster", "sign", r, "--key", str(consortium["admin2"]), "--previous-admin"
    )
    assert code == 0
    assert Roster.load(r).version == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["roster", "verify", "missing.json"], "does not exist"),
        (["roster", "add", "{roster}", "--name", "x", "--peer-id", "Qm123"], "neither 64 hex"),
        (
            ["roster", "add", "{roster}", "--name", "bad name", "--public-key", "ab" * 32],
            "member name",
        ),
        (["roster", "remove", "{roster}", "nobody"], "no member named"),
        (["roster", "verify", "{roster}", "--accept"], "--accept needs --state"),
        (["roster", "init", "{roster}", "--consortium", "c", "--admin", "ab" * 32], "exists"),
        (["roster", "renew", "{roster}", "--valid-days", "0"], "--valid-days"),
        (["roster", "verify", "{roster}", "--now", "yesterday"], "--now"),
    ],
)
def test_roster_errors_are_one_sentence(
    consortium: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    argv = [a.replace("{roster}", str(consortium["roster"])) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err
    assert err.startswith("p2pfed: error: ") and err.count("\n") == 1


def test_keygen_key_with_open_permissions_is_refused_by_sign(
    consortium: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    consortium["admin1"].chmod(0o644)
    code, _, err = run(
        capsys, "roster", "sign", str(consortium["roster"]), "--key", str(consortium["admin1"])
    )
    assert code == 2 and "too open" in err
