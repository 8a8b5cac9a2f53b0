"""chaosgen.child.run_json: the helper programs' (microbenchmark, tuning harness) failures are one
clear error naming the program, never an internal error or a hang."""

from __future__ import annotations

import pytest

from chaosgen import child
from chaosgen.errors import BuildError, ChaosgenError


def test_json_of_a_helper_program() -> None:
    assert child.run_json(["sh", "-c", 'echo \'{"s": 1.5}\''], "probe", timeout=30) == {"s": 1.5}


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("echo not json", "probe wrote no valid JSON: 'not json'"),
        ("echo oops >&2; exit 3", "probe failed (exit 3): oops"),
        ("sleep 30", "probe did not finish in 0.5 s"),
    ],
)
def test_a_failing_helper_program_is_one_clear_error(script: str, message: str) -> None:
    with pytest.raises(BuildError) as e:
        child.run_json(["sh", "-c", script], "probe", timeout=0.5, error=BuildError)
    assert str(e.value) == message


def test_a_missing_helper_program_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(ChaosgenError) as e:
        child.run_json([str(tmp_path / "gone")], "probe", timeout=5)
    assert str(e.value).startswith(f"probe: cannot run {tmp_path / 'gone'}: ")
