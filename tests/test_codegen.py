"""Stage 3, codegen: generated C++ pinned by golden files; the vectorizable tanh against libm.

Golden files are tests/golden/<spec>.<target>.cpp for every shipped spec and every deterministic
target (not `native`, which depends on the host), and tests/golden/<spec>.h for the API header.
After an intended change to the templates or codegen, regenerate them with
`python -m pytest tests/test_codegen.py --update-golden` and review `git diff tests/golden`.
"""

from __future__ import annotations

import difflib
import gzip
import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, SHIPPED
from proc import run

from chaosgen import codegen
from chaosgen.pipeline import front_end
from chaosgen.targets import TARGETS, get_compiler, native_target

GOLDEN = ROOT / "tests" / "golden"
MNIST = Path(os.environ.get("CHAOSGEN_DATA") or ROOT.parent / "shared" / "data" / "mnist")
DIFF_LINES = 120  # of a failing comparison's unified diff, shown in the message


def _render(spec: str, target: str) -> codegen.Source:
    """Render a shipped spec from its repository-relative path (cwd must be the repo root)."""
    parsed, net = front_end(f"specs/{spec}.net")
    return codegen.render(net, TARGETS[target], parsed.lines)


def _compare(path: Path, text: str, update: bool) -> None:
    if update:
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT)} is missing: run `pytest --update-golden`")
    want = path.read_text()
    if text != want:
        diff = list(
            difflib.unified_diff(
                want.splitlines(keepends=True),
                text.splitlines(keepends=True),
                f"{path.relative_to(ROOT)} (golden)",
                "generated now",
            )
        )
        more = f"\n... {len(diff) - DIFF_LINES} more diff lines" if len(diff) > DIFF_LINES else ""
        pytest.fail(
            f"generated code differs from {path.relative_to(ROOT)}; if intended, run "
            f"`pytest --update-golden` and review `git diff tests/golden`:\n"
            + "".join(diff[:DIFF_LINES])
            + more,
            pytrace=False,
        )


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("spec", SHIPPED)
def test_cpp_matches_golden(spec: str, target: str, update_golden: bool, in_repo) -> None:
    """The translation unit for (spec, target) is byte-identical to its golden file."""
    _compare(GOLDEN / f"{spec}.{target}.cpp", _render(spec, target).cpp, update_golden)


@pytest.mark.parametrize("spec", SHIPPED)
def test_header_matches_golden(spec: str, update_golden: bool, in_repo) -> None:
    """The C API header is the same for every target, and matches its golden file."""
    headers = {_render(spec, t).header for t in TARGETS}
    assert len(headers) == 1
    _compare(GOLDEN / f"{spec}.h", headers.pop(), update_golden)


def test_no_stale_golden_files() -> None:
    """Every top-level golden file belongs to a (spec, target) pair still generated."""
    expected = {f"{s}.{t}.cpp" for s in SHIPPED for t in TARGETS} | {f"{s}.h" for s in SHIPPED}
    found = {p.name for p in GOLDEN.iterdir() if p.is_file() and p.suffix in (".cpp", ".h")}
    assert found <= expected, f"stale golden files: {sorted(found - expected)}"


def test_output_is_deterministic_and_has_no_absolute_paths(in_repo) -> None:
    """Rendering twice gives the same text; an absolute spec path prints as its file name only,
    so neither the checkout's location nor the time ends up in generated code."""
    a, b = _render("small", "avx2"), _render("small", "avx2")
    assert a == b
    parsed, net = front_end(ROOT / "specs" / "small.net")
    src = codegen.render(net, TARGETS["avx2"], parsed.lines)
    assert str(ROOT) not in src.cpp and str(ROOT) not in src.header
    assert "// spec:    small.net " in src.cpp
    assert src.cpp == a.cpp.replace("specs/small.net", "small.net")
    assert src.header == a.header.replace("specs/small.net", "small.net")


def test_each_layer_points_back_to_its_spec_line(in_repo) -> None:
    """Above each layer's code, a comment names the spec file, line and statement."""
    cpp = _render("small", "generic").cpp
    for line in (5, 6, 7, 8, 9, 10):
        stmt = (ROOT / "specs/small.net").read_text().splitlines()[line - 1].split("#")[0].strip()
        assert f"// specs/small.net:{line}: {stmt}\n" in cpp


# --- the vectorizable tanh ----------------------------------------------------------------------
TANH_PROGRAM = r"""
#define CG_ALIGN 64
#include "prelude.hpp"
#include <cstdio>

/* Max |f(x) - reference(x)| over a grid, the reference in double precision from libm. */
template <class F, class R>
static void scan(const char *name, F f, R ref, double lo, double hi, long n) {
    double worst = 0.0, at = 0.0;
    for (long i = 0; i <= n; ++i) {
        const float x = static_cast<float>(lo + (hi - lo) * static_cast<double>(i) / n);
        const double err = std::fabs(static_cast<double>(f(x)) - ref(static_cast<double>(x)));
        if (!(err <= worst)) { worst = err; at = x; }
    }
    std::printf("%s %.9g %.9g\n", name, worst, at);
}

int main() {
    auto tanh_ref = [](double x) { return std::tanh(x); };
    scan("tanh", cg_tanh, tanh_ref, -10.0, 10.0, 4000000);        // step 5e-6
    scan("tanh_small", cg_tanh, tanh_ref, -1e-3, 1e-3, 200000);  // near 0, relative matters
    scan("tanh_wide", cg_tanh, tanh_ref, -1e4, 1e4, 2000000);     // saturation and the clamp
    scan("scaled_tanh", cg_scaled_tanh,
         [](double x) { return 1.7159 * std::tanh(2.0 * x / 3.0); }, -15.0, 15.0, 3000000);
    scan("sigmoid", cg_sigmoid,
         [](double x) { return 1.0 / (1.0 + std::exp(-x)); }, -20.0, 20.0, 4000000);
    const float inf = INFINITY;
    std::printf("special %.9g %.9g %.9g %.9g\n", cg_tanh(inf), cg_tanh(-inf), cg_tanh(0.0f),
                cg_tanh(-0.0f));
    return 0;
}
"""


@pytest.fixture(scope="module")
def tanh_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[float, ...]]:
    """Build the program with the flags the generated code gets for this machine, and run it."""
    compiler = get_compiler(None)
    if compiler.resolve() is None:
        pytest.skip(f"no C++ compiler ({compiler.cxx})")
    tmp = tmp_path_factory.mktemp("tanh")
    (tmp / "tanh.cpp").write_text(TANH_PROGRAM)
    flags = compiler.flags(native_target())
    cmd = [compiler.resolve(), *flags, "-I", str(codegen.template_dir()), "tanh.cpp", "-o", "tanh"]
    run(cmd, cwd=tmp)
    out = run([tmp / "tanh"]).stdout
    return {row.split()[0]: tuple(float(v) for v in row.split()[1:]) for row in out.splitlines()}


@pytest.mark.parametrize("name", ["tanh", "tanh_small", "tanh_wide", "sigmoid"])
def test_vectorized_tanh_matches_libm(name: str, tanh_errors: dict) -> None:
    """cg_tanh (and the sigmoid built on it) within 1e-6 of libm over a dense grid."""
    worst, at = tanh_errors[name]
    print(f"\n{name}: max abs error {worst:.3g} at x = {at:.6g}")
    assert worst < 1e-6, f"{name}: max abs error {worst:.3g} at x = {at}"


def test_scaled_tanh_matches_libm(tanh_errors: dict) -> None:
    """1.7159 tanh(2x/3) scales the error by 1.7159 (and S = 0.66666667f is within 1 ulp)."""
    worst, at = tanh_errors["scaled_tanh"]
    assert worst < 1.7159e-6 + 1e-7, f"max abs error {worst:.3g} at x = {at}"


def test_vectorized_tanh_special_values(tanh_errors: dict) -> None:
    """Saturates to exactly +-1 at +-inf (the clamp), odd at zero."""
    pos, neg, zero, negzero = tanh_errors["special"]
    assert abs(pos - 1) < 1e-6 and abs(neg + 1) < 1e-6
    assert zero == 0.0 and negzero == 0.0


@pytest.mark.parametrize("size", [1, 85, 2047, 2048, 2049, 60150, 2048 * 64, 2048 * 64 + 1, 2**28])
def test_lock_segments_cover_a_block_in_whole_cache_lines(size: int) -> None:
    seg = codegen.lock_segment(size)
    n = -(-size // seg)
    assert seg % 16 == 0 and seg >= codegen.LOCK_SEGMENT_FLOATS
    assert 1 <= n <= codegen.MAX_SEGMENTS  # a block's segments: one 64-bit mask
    assert (n - 1) * seg < size <= n * seg


@pytest.mark.parametrize("maps,kernel", [(100, 3), (40, 5), (8, 2), (1000, 5)])
def test_backward_data_blocks_keep_their_weights_in_l1(maps: int, kernel: int, tmp_path) -> None:
    """A backward-data block of m input maps re-reads m x TAPS x OUT_MAPS weights once per tap:
    the blocking keeps them within L1_REUSE_BYTES (or takes one map when even that is more)."""
    spec = tmp_path / "x.net"
    spec.write_text(
        "input maps=2 size=20x20\nconv maps=30 kernel=3\n"
        f"conv maps={maps} kernel={kernel}\noutput classes=3\n"
    )
    _, net = front_end(spec)
    (view,) = [v for v in codegen.layer_views(net, native_target(), ()) if v.get("b_form")]
    per_map = 4 * kernel * kernel * maps
    assert view["b"].maps == 1 or view["b"].maps * per_map <= codegen.L1_REUSE_BYTES


# --- user text in generated files (issue 10) ---------------------------------------------------
@pytest.mark.parametrize(
    "text, comment",
    [
        ("specs/small.net:5: conv c1: maps=5", "specs/small.net:5: conv c1: maps=5"),
        ("C:\\dir\\", "C:\\dir<U+005C>"),  # a backslash at the end would splice the next line
        ("C:\\dir\\ \t ", "C:\\dir<U+005C>"),  # gcc splices across trailing blanks too
        ("a*/b /*c*/", "a*<U+002F>b /<U+002A>c*<U+002F>"),
        ("what??/", "what??<U+002F>"),
        ("line\nbreak\r\fx\v", "line<U+000A>break<U+000D><U+000C>x<U+000B>"),
        ("r\u00e9seau \u202e\u2028\U0001f600", "r<U+00E9>seau <U+202E><U+2028><U+1F600>"),
        ("bad\udcffbyte", "bad<U+DCFF>byte"),
    ],
)
def test_comment_text(text: str, comment: str) -> None:
    """One printable ASCII line that cannot end a comment or splice the next line."""
    assert codegen.comment_text(text) == comment


def test_shell_word() -> None:
    """Quoted only where needed (shipped specs' scripts are unchanged)."""
    assert codegen.shell_word("specs/small.net") == "specs/small.net"
    assert codegen.shell_word("a b'$(x)\n") == "'a b'\"'\"'$(x)\n'"


def test_c_string_round_trips_through_gcc(tmp_path: Path) -> None:
    """Every string, written as a C++ literal with c_string, compiles (no warning with -Wall)
    to exactly its UTF-8 bytes (a file name's undecodable bytes as they were)."""
    cases = ['a"b\\c', "??/ ??= ??( trigraphs", "\n\r\t\0\x7f end", "r\u00e9seau \U0001f600",
             "oct\x01" + "7", "bad\udcffbyte", "*/ /* // \\"]
    raw = [c.encode("utf-8", "surrogateescape") for c in cases]
    body = "".join(
        f'    put("{codegen.c_string(c)}", {len(r)});\n' for c, r in zip(cases, raw, strict=True)
    )
    src = tmp_path / "s.cpp"
    src.write_text(
        "#include <cstdio>\n"
        "static void put(const char *s, unsigned n) {\n"
        "    for (unsigned i = 0; i < n; i++) std::printf(\"%02x\", (unsigned char)s[i]);\n"
        "    std::printf(\"\\n\");\n}\n"
        f"int main() {{\n{body}}}\n"
    )
    gxx = get_compiler("gcc")
    proc = subprocess.run([gxx.cxx, "-std=c++17", "-Wall", "-Werror", "-o", str(tmp_path / "s"),
                           str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(tmp_path / "s")], capture_output=True, check=True, text=True)
    assert out.stdout.split() == [r.hex() for r in raw]


def test_generated_code_size_is_bounded(in_repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """Code over MAX_CODE_BYTES is a located error before any compiler runs."""
    from chaosgen.errors import SpecError

    spec, net = front_end("specs/small.net")
    size = len(codegen.render(net, TARGETS["avx2"], spec.lines).cpp)
    monkeypatch.setattr(codegen, "MAX_CODE_BYTES", size - 1)
    with pytest.raises(SpecError) as err:
        codegen.render(net, TARGETS["avx2"], spec.lines)
    assert str(err.value) == (
        f"specs/small.net:4:1: error: the generated code ({size} bytes) exceeds the limit of "
        f"{size - 1} bytes (the C++ compiler's time and memory grow with it): use fewer layers"
    )


ODD_DIR = 'odd */ ??/"q" \u00e9 \\\nx'  # `*/`, a trigraph, quotes, non-ASCII, backslash-newline
ODD_SPEC = (
    "\ufeff# a comment that ends in a backslash \\\r\n"
    "network odd\r\n"
    "input maps=1 size=29x29   # C:\\data\\\r\n"
    "\r\n"
    "conv c1: maps=2 kernel=4x4\factivation=relu # trailing \\\r\n"
    "maxpool p1: window=2x2 # */ /* ??/\r\n"
    "output out: classes=10 # ??/\r\n"
)


@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="no MNIST")
def test_odd_source_text_compiles_and_trains(tmp_path: Path, monkeypatch) -> None:
    """A spec with comments ending in backslashes (and `*/`, `??/`, a form feed, CR LF, a BOM) at
    a path holding `*/`, a newline and quotes: its library builds with g++ and trains, its
    program builds and runs, and the generated code still shows each layer's statement
    (regression: a spec line ending in a backslash, copied into a // comment, swallowed the next
    line of C++)."""
    import json

    from chaosgen import cli
    from chaosgen.pipeline import compile_spec

    monkeypatch.chdir(tmp_path)
    rel = f"{ODD_DIR}/spec.net"
    (tmp_path / ODD_DIR).mkdir(parents=True)
    (tmp_path / rel).write_bytes(ODD_SPEC.encode())
    shown = 'odd *<U+002F> ??<U+002F>"q" <U+00E9> \\<U+000A>x/spec.net'
    cpp = compile_spec(rel, target="avx2", build=False).source.cpp
    assert f"// {shown}:5: conv c1: maps=2 kernel=4x4<U+000C>activation=relu\n" in cpp
    assert f"// {shown}:6: maxpool p1: window=2x2\n" in cpp
    assert f"// spec:    {shown} (network \"odd\")\n" in cpp
    assert cpp.isascii()

    build, ck = tmp_path / "build", tmp_path / "ck"
    argv = ["train", rel, "--cc", "gcc", "--build-dir", str(build), "--data", str(MNIST),
            "--epochs", "1", "--limit", "64", "--val-limit", "32", "--test-limit", "32",
            "--threads", "1", "--checkpoint-dir", str(ck), "--quiet"]
    assert cli.main(argv) == 0

    out = tmp_path / "prog"
    assert cli.main(["compile", rel, "--program", "--out", str(out), "--build-dir", str(build),
                     "--cc", "gcc"]) == 0
    for name in ("main.cpp", "net.cpp", "build.sh", "run.sh", codegen.HEADER_NAME):
        assert (out / name).read_bytes().isascii(), name
    assert f"build chaosgen-odd (network odd, {shown})\n" in (out / "build.sh").read_text()
    proc = subprocess.run(["sh", "-n", str(out / "run.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in MNIST.iterdir():
        if f.name.endswith("-ubyte.gz"):
            (raw / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    args = ["--epochs", "1", "--limit", "64", "--val-limit", "32", "--test-limit", "32",
            "--threads", "1", "--data", str(raw)]
    proc = subprocess.run([str(out / "chaosgen-odd"), *args], cwd=out, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert f"odd ({ODD_DIR}/spec.net, target".encode() in proc.stdout
    record = json.loads((out / "run.jsonl").read_text().splitlines()[0])
    assert record["config"]["spec"] == rel


# --- a spec with the geometry of published nets (pad, stride, round; tests/nets/) ----------------
NETS = ("geometry", "fft")


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("spec", NETS)
def test_nets_cpp_matches_golden(spec: str, target: str, update_golden: bool, in_repo) -> None:
    """tests/nets/<spec>.net's translation unit is byte-identical to tests/golden/nets/."""
    parsed, net = front_end(f"tests/nets/{spec}.net")
    cpp = codegen.render(net, TARGETS[target], parsed.lines).cpp
    _compare(GOLDEN / "nets" / f"{spec}.{target}.cpp", cpp, update_golden)
