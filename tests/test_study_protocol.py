"""The study protocol document: codec, hash, and m-of-n admin signatures, attacked."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.identity import (
    Feature,
    Identity,
    Roster,
    RosterError,
    RosterProblem,
    StudyProtocol,
    check_protocol,
)
from p2pfed.identity.protocol import FEATURE_TYPES, MAX_PROTOCOL_BYTES, PRIVACY_MODES

NOW = datetime(2026, 12, 1, tzinfo=UTC)
ADMINS = [Identity.from_seed(bytes([100 + i]) * 32) for i in range(3)]
OUTSIDER = Identity.from_seed(b"\x07" * 32)


def roster(threshold: int = 2) -> Roster:
    return Roster(
        "cardio", 1, NOW + timedelta(days=30), (), tuple(a.public_key for a in ADMINS), threshold
    )


def protocol(**changes: object) -> StudyProtocol:
    base = StudyProtocol(
        "cardio",
        (Feature("age", "int", 60.0, 12.5), Feature("bp", "float", 130.0, 20.0)),
        "outcome",
        (0, 1),
        model="mlp",
        hidden=(16,),
        rounds=8,
        privacy_mode="local",
        epsilon=4.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


names = st.text(st.characters(codec="utf-8", categories=("L", "N", "P")), min_size=1, max_size=20)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e12, max_value=1e12)


@st.composite
def protocols(draw: st.DrawFn) -> StudyProtocol:
    feature_names = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    label = draw(names.filter(lambda n: n not in feature_names))
    features = tuple(
        Feature(
            n,
            draw(st.sampled_from(FEATURE_TYPES)),
            draw(finite),
            draw(st.floats(min_value=1e-6, max_value=1e6)),
        )
        for n in feature_names
    )
    return StudyProtocol(
        draw(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)),
        features,
        label,
        tuple(draw(st.lists(st.integers(0, 50), min_size=2, max_size=5, unique=True))),
        model=draw(st.sampled_from(["logistic", "mlp", "pkg.mod:factory"])),
        hidden=tuple(draw(st.lists(st.integers(1, 512), max_size=3))),
        seed=draw(st.integers(0, 2**31)),
        local_epochs=draw(st.integers(1, 9)),
        batch_size=draw(st.integers(1, 4096)),
        learning_rate=draw(st.floats(min_value=1e-6, max_value=10)),
        rounds=draw(st.integers(1, 1000)),
        privacy_mode=draw(st.sampled_from(PRIVACY_MODES)),
        epsilon=draw(st.floats(min_value=1e-3, max_value=100)),
        delta=draw(st.floats(min_value=1e-12, max_value=0.5)),
    )


@settings(max_examples=60, deadline=None)
@given(protocols(), st.integers(0, 2))
def test_the_codec_round_trips_and_the_hash_is_the_canonical_bodys(
    document: StudyProtocol, signers: int
) -> None:
    for admin in ADMINS[:signers]:
        document = document.signed_by(admin)
    again = StudyProtocol.from_json(document.to_json())
    assert again == document
    assert again.digest() == document.digest()
    # The layout of the file does not change the hash: the body is hashed canonically.
    compact = json.dumps(json.loads(document.to_json()), separators=(",", ":"))
    assert StudyProtocol.from_json(compact).digest() == document.digest()


def test_any_changed_field_changes_the_hash() -> None:
    base = protocol()
    for change in (
        {"features": (Feature("bp", "float", 130.0, 20.0), Feature("age", "int", 60.0, 12.5))},
        {"features": (Feature("age", "int", 60.0, 12.0), Feature("bp", "float", 130.0, 20.0))},
        {"classes": (0, 1, 2)},
        {"hidden": (32,)},
        {"learning_rate": 0.05},
        {"rounds": 9},
        {"epsilon": 4.5},
    ):
        assert protocol(**change).digest() != base.digest(), change


def test_threshold_signatures_of_the_rosters_admins_are_required() -> None:
    unsigned = protocol()
    with pytest.raises(RosterError, match="carries 0 valid signatures") as info:
        check_protocol(unsigned, roster())
    assert info.value.problem is RosterProblem.UNDER_SIGNED
    one = unsigned.signed_by(ADMINS[0])
    with pytest.raises(RosterError, match="2 of 3 are required"):
        check_protocol(one, roster())
    # An outsider's signature and a repeated admin do not count.
    with pytest.raises(RosterError, match="carries 1 valid signature of"):
        check_protocol(one.signed_by(OUTSIDER), roster())
    with pytest.raises(Exception, match="already signed"):
        one.signed_by(ADMINS[0])
    check_protocol(one.signed_by(ADMINS[2]), roster())
    check_protocol(one, roster(threshold=1))


def test_a_document_changed_after_signing_is_refused_as_tampered() -> None:
    signed = protocol().signed_by(ADMINS[0]).signed_by(ADMINS[1])
    text = signed.to_json().replace('"epsilon": 4.0', '"epsilon": 40.0')
    tampered = StudyProtocol.from_json(text)
    assert tampered.epsilon == 40.0
    with pytest.raises(RosterError, match="changed after it was signed") as info:
        check_protocol(tampered, roster())
    assert info.value.problem is RosterProblem.TAMPERED


def test_a_protocol_of_another_consortium_is_refused() -> None:
    other = protocol(consortium_id="oncology").signed_by(ADMINS[0]).signed_by(ADMINS[1])
    with pytest.raises(RosterError, match="for consortium 'oncology'") as info:
        check_protocol(other, roster())
    assert info.value.problem is RosterProblem.WRONG_CONSORTIUM


def test_a_roster_signature_does_not_sign_a_protocol() -> None:
    """Domain separation: an admin's roster signature cannot be replayed onto a protocol."""
    document = protocol()
    signed_roster = roster().signed_by(ADMINS[0]).signed_by(ADMINS[1])
    forged = dataclasses.replace(document, signatures=signed_roster.signatures)
    with pytest.raises(RosterError, match="changed after it was signed"):
        check_protocol(forged, roster())


def body(**changes: object) -> str:
    document = json.loads(protocol().to_json())
    for dotted, value in changes.items():
        target = document["body"]
        *path, last = dotted.split("__")
        for key in path:
            target = target[key] if not key.isdigit() else target[int(key)]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return json.dumps(document)


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        ({"format": "p2pfed-study/9"}, "expected p2pfed-study/1"),
        ({"rounds": "8"}, "rounds must be an integer"),
        ({"rounds": 0}, "rounds must be 1-1000000"),
        ({"label__classes": [1]}, "label classes must be 2-1024 distinct"),
        ({"label__classes": [0, -1]}, "must be non-negative"),
        ({"label__column": "age"}, "label column is also listed as a feature"),
        ({"features": []}, "features: 1-4096 needed"),
        ({"features__0__scale": 0}, "feature 'age': scale must be positive"),
        ({"features__0__center": "x"}, "center must be a number"),
        ({"features__0__type": "text"}, "type must be one of"),
        ({"features__1__name": "age"}, "a feature name is listed twice"),
        ({"features__0__extra": 1}, "unexpected field 'extra'"),
        ({"model__seed": KeyError}, "lacks the field 'seed'"),
        ({"privacy__mode": "loud"}, "privacy mode must be one of"),
        ({"privacy__delta": 1.5}, "privacy delta must be in"),
        ({"training__learning_rate": True}, "learning_rate must be a number"),
    ],
)
def test_each_bad_field_is_refused_with_one_sentence_naming_it(
    changes: dict[str, object], sentence: str
) -> None:
    with pytest.raises(RosterError, match=sentence) as info:
        StudyProtocol.from_json(body(**changes))
    assert info.value.problem is RosterProblem.MALFORMED
    assert "\n" not in str(info.value)


def test_an_oversized_document_is_refused_before_parsing() -> None:
    with pytest.raises(RosterError, match=f"larger than {MAX_PROTOCOL_BYTES} bytes"):
        StudyProtocol.from_json(b" " * (MAX_PROTOCOL_BYTES + 1))
