from __future__ import annotations

import pytest

from p2pfed.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--peers", "1"], "--peers must lie in 2..32"),
        (["--chunk-kb", "0"], "--chunk-kb must lie in 1..8192"),
        (["--repeats", "0"], "--repeats must be at least 1"),
    ],
)
def test_bad_arguments_fail_with_one_sentence(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "allreduce", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
