"""``settings.comma_list``: the one reader of comma-separated command-line values.

Every list of good items reads back as written; any bad item, wherever it sits, is refused
in one sentence that names it (argparse puts the flag in front).
"""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfed.settings import comma_list

positive = comma_list(int, "a positive whole number", lambda n: n >= 1)


@given(st.lists(st.integers(1, 10**12), min_size=1), st.sampled_from([",", ", ", " ,"]))
def test_good_items_read_back_as_written(values: list[int], comma: str) -> None:
    assert positive(comma.join(map(str, values))) == values


@given(
    st.lists(st.integers(1, 10**6), max_size=5),
    st.lists(st.integers(1, 10**6), max_size=5),
    st.sampled_from(["0", "-3", "x", "", "1.5", "nan", "1e99999"]),
)
def test_a_bad_item_anywhere_is_named(before: list[int], after: list[int], bad: str) -> None:
    text = ",".join([*map(str, before), bad, *map(str, after)])
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        positive(text)
    assert str(refused.value) == f"item {bad!r} of {text!r} is not a positive whole number"


def test_an_overflowing_reader_is_a_bad_item_not_a_traceback() -> None:
    counts = comma_list(lambda v: int(float(v)), "a parameter count")
    assert counts("1e6,2.5e6") == [1_000_000, 2_500_000]
    with pytest.raises(argparse.ArgumentTypeError, match="item 'inf' of '1e6,inf'"):
        counts("1e6,inf")  # int(float("inf")) raises OverflowError


def test_argparse_names_the_flag_and_the_item(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="p2pfed bench sim")
    parser.add_argument("--sizes", type=positive)
    assert parser.parse_args(["--sizes", "64,256"]).sizes == [64, 256]
    with pytest.raises(SystemExit):
        parser.parse_args(["--sizes", "64,x"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        "p2pfed bench sim: error: argument --sizes: item 'x' of '64,x' is not a positive whole "
        "number"
    )
