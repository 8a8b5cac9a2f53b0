"""What the operating system refuses (a path, memory) reaches the user as one line and exit 1,
never as "internal error" (exit 3, which means a bug in chaosgen)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from chaosgen.cli import main, os_error

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CHAOSGEN_DATA") or ROOT.parent / "shared" / "data" / "mnist")


def test_an_os_error_names_the_file_and_exits_1(tmp_path, capsys, in_repo):
    """A build cache under a regular file (ENOTDIR). Before: internal error, exit 3."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = main(["compile", "specs/small.net", "--build-dir", str(blocker / "cache")])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.startswith(f"chaosgen: error: {blocker}") and err.count("\n") == 1
    assert "internal error" not in err and "Traceback" not in err


def test_os_error_text():
    e = OSError(2, "No such file or directory", "a.txt")
    assert os_error(e) == "a.txt: No such file or directory"
    e = OSError(18, "Invalid cross-device link", "a", None, "b")
    assert os_error(e) == "a -> b: Invalid cross-device link"
    assert os_error(OSError(28, "No space left on device")) == "No space left on device"


def test_out_of_memory_is_one_line():
    """MNIST read in a process limited to 250 MB. Before: internal error (MemoryError)."""
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (250 << 20, 250 << 20)); "
        "from chaosgen.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "data", "info", "--data", str(DATA)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("chaosgen: error: ") and proc.stderr.count("\n") == 1
    assert "memory" in proc.stderr and "internal error" not in proc.stderr
