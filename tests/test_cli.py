"""The `chaosgen compile` command: every bad spec gives located gcc-style errors and exit 1 (no
traceback); misuse exits 2; --emit prints each stage.

Each tests/bad/*.net starts with one `# expect: line:col: error: message` line per diagnostic it
must produce, in order (files that cannot hold a comment are listed in NO_COMMENT below).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

from chaosgen.cli import main
from chaosgen.parse import parse_file

BAD = sorted((ROOT / "tests" / "bad").glob("*.net"))
NO_COMMENT = {"empty.net": ["1:1: error: empty spec: expected an input, layers and an output"]}
DIAG = re.compile(r"^(?P<path>\S+?):(?P<line>\d+):(?P<col>\d+): error: ")


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _expected(path: Path) -> list[str]:
    if path.name in NO_COMMENT:
        return NO_COMMENT[path.name]
    lines = path.read_bytes().split(b"\n")
    expect = [ln[len(b"# expect: ") :].decode() for ln in lines if ln.startswith(b"# expect: ")]
    assert lines[0].startswith(b"# expect: ") and expect, f"{path.name}: no `# expect:` first line"
    return expect


def _check_diagnostics(err: str, rel: str, expected: list[str]) -> None:
    """Exactly the expected diagnostics in order, each followed by its source line and a caret
    under the column (when it points into the text), then the count."""
    lines = err.splitlines()
    diags = [i for i, ln in enumerate(lines) if DIAG.match(ln)]
    assert [lines[i] for i in diags] == [f"{rel}:{e}" for e in expected], err
    n = len(expected)
    assert lines[-1] == f"{n} error{'s' if n != 1 else ''} generated.", err
    text = (ROOT / rel).read_bytes().decode("utf-8", "replace") if rel else ""
    # docs/language.md: lines end at LF, CR LF or CR only (not at every str.splitlines break)
    src = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for i in diags:
        m = DIAG.match(lines[i])
        line, col = int(m["line"]), int(m["col"])
        if i + 1 < len(lines) and lines[i + 1].startswith(" "):  # the source line and a caret
            assert lines[i + 1] == " " + _escaped(src[line - 1].expandtabs(1)), err
            assert lines[i + 2] == " " * col + "^", err


def _escaped(line: str) -> str:
    """A source line as echoed: what a terminal would act on shown as <U+XXXX>."""
    return "".join(c if c.isprintable() else f"<U+{ord(c):04X}>" for c in line)


@pytest.mark.parametrize("path", BAD, ids=[p.name for p in BAD])
def test_bad_spec_is_reported(path: Path, capsys, in_repo) -> None:
    """Exit status 1, the located messages the fixture states, nothing on stdout, no traceback."""
    rel = path.relative_to(ROOT).as_posix()
    code, out, err = _run(capsys, "compile", rel)
    assert code == 1, err
    assert out == ""
    assert "Traceback" not in err and "internal error" not in err
    _check_diagnostics(err, rel, _expected(path))


def test_bad_fixtures_cover_the_issue() -> None:
    """The cases the issue asks for are all present."""
    names = {p.stem for p in BAD}
    required = (
        "unknown_statement unknown_activation unknown_attribute kernel_too_large pool_too_large "
        "pool_not_tiling nonpositive_size absurd_size memory_bound missing_input missing_output "
        "duplicate_names layer_after_output ce_without_softmax syntax_error empty binary "
        "several_errors"
    ).split()
    assert set(required) <= names, set(required) - names
    assert len(_expected(ROOT / "tests/bad/several_errors.net")) >= 5


@pytest.mark.parametrize(
    "path, message",
    [
        ("tests/bad", "is a directory, not a spec file"),
        ("tests/bad/no-such-file.net", "cannot read file: No such file or directory"),
    ],
)
def test_unreadable_spec_is_reported(path: str, message: str, capsys, in_repo) -> None:
    """A directory or a missing file: one located error, exit 1."""
    code, _, err = _run(capsys, "compile", path)
    assert code == 1
    assert err.splitlines()[0] == f"{path}:1:1: error: {message}"
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["compile"], "the following arguments are required: spec"),
        (["compile", "specs/small.net", "--emit", "asm"], "invalid choice: 'asm'"),
        (["compile", "specs/small.net", "--bogus"], "unrecognized arguments: --bogus"),
        (
            ["compile", "specs/small.net", "--target", "z80", "--emit", "cpp"],
            "unknown target 'z80'",
        ),
        (["compile", "specs/small.net", "--cc", "tcc", "--emit", "cmd"], "unknown compiler 'tcc'"),
    ],
)
def test_misuse_exits_2(argv: list[str], message: str, capsys, in_repo) -> None:
    """Command-line misuse: exit status 2 and one `chaosgen: error:` line, like argparse."""
    code, _, err = _run(capsys, *argv)
    assert code == 2, err
    assert "Traceback" not in err
    assert any(ln.startswith("chaosgen: error: ") and message in ln for ln in err.splitlines()), (
        err
    )


def test_emit_every_stage(capsys, in_repo) -> None:
    """--emit ast / ir / cpp / header / cmd print one stage each, without building."""
    code, out, _ = _run(capsys, "compile", "specs/small.net", "--emit", "ast")
    assert code == 0 and out == parse_file("specs/small.net").to_text()
    assert out.startswith("network small\ninput maps=1 size=29x29\nconv c1: maps=5 kernel=4x4")
    code, out, _ = _run(capsys, "compile", "specs/small.net", "--emit", "ir")
    ir = json.loads(out)
    assert code == 0 and ir["name"] == "small" and len(ir["layers"]) == 6
    code, out, _ = _run(capsys, "compile", "specs/small.net", "--emit", "cpp", "--target", "avx2")
    assert code == 0 and out == (ROOT / "tests/golden/small.avx2.cpp").read_text()
    code, out, _ = _run(capsys, "compile", "specs/small.net", "--emit", "header")
    assert code == 0 and out == (ROOT / "tests/golden/small.h").read_text()
    code, out, _ = _run(capsys, "compile", "specs/small.net", "--emit", "cmd", "--target", "avx2")
    assert code == 0 and out.split()[-4:] == ["-shared", "-o", "libnet.so", "net.cpp"]
    assert "-march=haswell" in out.split()
