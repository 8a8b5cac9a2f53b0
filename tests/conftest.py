"""Shared fixtures and options of the test suite.

`pytest --update-golden` rewrites tests/golden/ from the current templates instead of comparing
(review the result with `git diff tests/golden`). `-m "not packaging"` skips the wheel build.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Test this checkout's chaosgen from any working directory (installed or not; the wheel itself is
# checked by tests/test_build.py).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SHIPPED = ("small", "medium", "large")
# MNIST as the README's test command finds it: $CHAOSGEN_DATA, else ../shared/data/mnist. A
# command that a test runs without --data would look in ~/.cache instead.
DATA = os.environ.get("CHAOSGEN_DATA") or str(ROOT.parent / "shared" / "data" / "mnist")
# FFTW (libfftw3-dev: header and single-precision library), for algorithm=fft layers
HAVE_FFTW = Path("/usr/include/fftw3.h").exists() and bool(ctypes.util.find_library("fftw3f"))


def pytest_addoption(parser: pytest.Parser) -> None:
    """--update-golden: regenerate the golden files instead of comparing with them."""
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/* from the current code generator instead of comparing",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register this suite's markers."""
    config.addinivalue_line("markers", "packaging: builds a wheel (30-60 s)")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """Whether this run regenerates golden files."""
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test from the repository root, so spec paths like specs/small.net are relative."""
    monkeypatch.chdir(ROOT)
    return ROOT


@pytest.fixture(scope="session")
def shipped_nets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """small, medium and large compiled for this machine once per session, in a private cache."""
    import chaosgen

    build_dir = tmp_path_factory.mktemp("shipped-build")
    return {
        name: chaosgen.compile(ROOT / "specs" / f"{name}.net", build_dir=build_dir)
        for name in SHIPPED
    }
