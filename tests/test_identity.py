import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import ConfigError
from p2pfed.identity import (
    Identity,
    peer_id_from_public_key,
    public_key_from_peer_id,
    verify_signature,
)
from p2pfed.identity.keys import b58decode, b58encode

seeds = st.binary(min_size=32, max_size=32)


@settings(max_examples=25, deadline=None)
@given(seed=seeds)
def test_peer_id_equals_libp2p(seed: bytes) -> None:
    from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
    from libp2p.peer.id import ID

    identity = Identity.from_seed(seed)
    theirs = ID.from_pubkey(Ed25519PublicKey.from_bytes(identity.public_key)).to_base58()
    assert identity.peer_id == theirs
    # libp2p's own key pair from the same seed is the same peer: the transport can use it.
    pair = create_new_key_pair(seed)
    assert ID.from_pubkey(pair.public_key).to_base58() == identity.peer_id
    assert identity.peer_id.startswith("12D3KooW")


def test_identity_module_does_not_import_libp2p() -> None:
    code = "import sys, p2pfed.identity, p2pfed.wire; print('libp2p' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


@given(data=st.binary(max_size=64))
def test_base58_round_trip(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data


def test_base58_known_vectors() -> None:
    # From the base58btc test vectors of the multibase specification.
    assert b58encode(b"Hello World!") == "2NEpo7TZRRrLZSi2U"
    assert b58encode(b"\x00\x00\x28\x7f\xb4\xcd") == "11233QC4"
    with pytest.raises(ValueError):
        b58decode("0OIl")


@settings(max_examples=50, deadline=None)
@given(seed=seeds, message=st.binary(max_size=100))
def test_sign_and_verify(seed: bytes, message: bytes) -> None:
    identity = Identity.from_seed(seed)
    sig = identity.sign(message)
    assert verify_signature(identity.public_key, message, sig)
    assert not verify_signature(identity.public_key, message + b"x", sig)
    tampered = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify_signature(identity.public_key, message, tampered)
    assert public_key_from_peer_id(identity.peer_id) == identity.public_key


@pytest.mark.parametrize(
    ("key", "sig"), [(b"short", bytes(64)), (bytes(32), b"short"), ("text", bytes(64))]
)
def test_verify_never_raises_on_garbage(key: object, sig: object) -> None:
    assert verify_signature(key, b"m", sig) is False  # type: ignore[arg-type]


def test_bad_seeds_and_peer_ids() -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        Identity.from_seed(b"x" * 31)
    with pytest.raises(ConfigError, match="32 bytes"):
        peer_id_from_public_key(b"x")
    with pytest.raises(ConfigError, match="not base58"):
        public_key_from_peer_id("0000")
    with pytest.raises(ConfigError, match="Ed25519"):
        public_key_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")


def test_repr_hides_the_seed() -> None:
    identity = Identity.from_seed(bytes(range(32)))
    assert bytes(range(32)).hex() not in repr(identity)
    assert identity.peer_id in repr(identity)
    assert identity == Identity.from_seed(bytes(range(32)))
    assert identity != Identity.generate()


def test_save_and_load(tmp_path: Path) -> None:
    identity = Identity.generate()
    path = tmp_path / "node.key"
    old_umask = os.umask(0)  # even with a permissive umask the file is 0600
    try:
        identity.save(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == identity.seed
    assert Identity.load(path) == identity
    assert [p.name for p in tmp_path.iterdir()] == ["node.key"]  # no temp file left


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = Identity.generate()
    first.save(path)
    with pytest.raises(ConfigError, match="already exists"):
        Identity.generate().save(path)
    assert Identity.load(path) == first
    second = Identity.generate()
    second.save(path, overwrite=True)
    assert Identity.load(path) == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o601])
def test_load_refuses_open_permissions(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    Identity.generate().save(path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=r"too open.*chmod 600"):
        Identity.load(path)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Identity.load(tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"x" * 40)
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="exactly the 32-byte"):
        Identity.load(bad)
    with pytest.raises(ConfigError, match="directory"):
        Identity.generate().save(tmp_path / "no" / "such" / "dir.key")
    (tmp_path / "adir").mkdir(mode=0o700)
    with pytest.raises(ConfigError):
        Identity.load(tmp_path / "adir")
