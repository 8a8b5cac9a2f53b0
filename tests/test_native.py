"""chaosgen.native: the standalone program (golden main.cpp and scripts for every shipped spec and
target; built here with gcc and clang and trained on real MNIST), CGW1 weights and their import,
and gcc/clang builds of the avx2 and generic targets against the PyTorch float64 oracle."""

from __future__ import annotations

import difflib
import gzip
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SHIPPED

import chaosgen
from chaosgen import checkpoint, cli, data, native
from chaosgen.data import sets  # noqa: F401  (data.sets)
from chaosgen.errors import ChaosgenError
from chaosgen.pipeline import front_end
from chaosgen.targets import COMPILERS, TARGETS, get_target
from chaosgen.train import Runtime

GOLDEN = ROOT / "tests" / "golden" / "program"
MNIST = Path(os.environ.get("CHAOSGEN_DATA") or ROOT.parent / "shared" / "data" / "mnist")
HAVE_CLANG = shutil.which("clang++") is not None
needs_mnist = pytest.mark.skipif(
    not (MNIST / "train-images-idx3-ubyte.gz").is_file(), reason=f"MNIST not found in {MNIST}"
)
GOLDEN_FILES = ("main.cpp", "build.sh", "run.sh")


def _default_compiler(target: str) -> str:
    return "icc" if target == "knc" else "gcc"  # fixed, not $CXX: golden files are portable


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("spec", SHIPPED)
def test_program_files_match_golden(spec: str, target: str, update_golden: bool, in_repo) -> None:
    """main.cpp, build.sh and run.sh of every shipped spec and target (net.cpp has its own)."""
    parsed, net = front_end(f"specs/{spec}.net")
    compiler = COMPILERS[_default_compiler(target)]
    files = native.render_program(net, TARGETS[target], compiler, parsed.lines, version=None)
    for name in GOLDEN_FILES:
        path = GOLDEN / f"{spec}.{target}" / name
        got = files[name]
        assert isinstance(got, str)
        if update_golden:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(got)
            continue
        assert path.exists(), f"{path} missing: run `pytest --update-golden` and review the diff"
        want = path.read_text()
        if got != want:
            diff = difflib.unified_diff(
                want.splitlines(), got.splitlines(), str(path), "generated", lineterm=""
            )
            pytest.fail("\n".join(list(diff)[:80]))


def test_program_uses_the_library_sources_and_initial_weights(small_lib) -> None:
    """net.cpp and the header are codegen's; init.cgw holds what Net.init_weights gives."""
    spec, net = front_end(ROOT / "specs" / "small.net")
    target = get_target("generic")
    files = native.render_program(net, target, COMPILERS["gcc"], spec.lines, version=None)
    source = chaosgen.codegen.render(net, target, spec.lines)
    assert files["net.cpp"] == source.cpp and files["chaosgen_api.h"] == source.header
    init = native.parse_cgw(files["init.cgw"])
    assert (init.ir_hash, init.epochs, init.partial) == (net.digest(), 0, False)
    small_lib.init_weights(net.training.seed)
    np.testing.assert_array_equal(init.params, small_lib.params)


def test_cgw_round_trip_and_refusals(tmp_path: Path) -> None:
    _, net = front_end(ROOT / "specs" / "small.net")
    params = np.random.default_rng(0).standard_normal(net.n_params).astype(np.float32)
    w = native.Weights(params, net.digest(), epochs=3, eta=0.000729, partial=True)
    path = tmp_path / "w.cgw"
    native.write_cgw(path, w)
    raw = path.read_bytes()
    assert raw[:4] == b"CGW1" and len(raw) == 40 + 4 * net.n_params
    assert raw[8:24] == net.digest().encode() and raw[40:44] == params[:1].tobytes()
    back = native.read_cgw(path)
    np.testing.assert_array_equal(back.params, params)
    assert (back.ir_hash, back.epochs, back.eta, back.partial) == (net.digest(), 3, 0.000729, True)
    assert native.checked_for(back, net, path) is back

    path.write_bytes(raw[:-4])
    with pytest.raises(ChaosgenError, match="truncated"):
        native.read_cgw(path)
    path.write_bytes(b"PK\x03\x04" + raw[4:])
    with pytest.raises(ChaosgenError, match="not a CGW1 weights file"):
        native.read_cgw(path)
    _, medium = front_end(ROOT / "specs" / "medium.net")
    with pytest.raises(ChaosgenError, match="another network"):
        native.checked_for(back, medium, path)

    # momentum's velocity: flag bit 1, n_params more floats (a reader without it sees the size)
    native.write_cgw(path, native.Weights(params, net.digest(), 1, 0.01, velocity=-params))
    raw = path.read_bytes()
    assert raw[28] == 2 and len(raw) == 40 + 8 * net.n_params
    np.testing.assert_array_equal(native.read_cgw(path).velocity, -params)
    path.write_bytes(raw[:-4])
    with pytest.raises(ChaosgenError, match="parameters and their velocity"):
        native.read_cgw(path)


def test_import_and_export_weights_commands(tmp_path: Path, in_repo, capsys) -> None:
    _, net = front_end("specs/small.net")
    params = native.initial_params(net, 7)
    native.write_cgw(tmp_path / "w.cgw", native.Weights(params, net.digest(), 2, 0.00081))
    assert cli.main(["import-weights", "specs/small.net", str(tmp_path / "w.cgw")]) == 0
    ck = checkpoint.load(tmp_path / "w.npz", net)
    np.testing.assert_array_equal(ck.params, params)
    assert (ck.epoch, ck.eta, ck.net, ck.partial) == (2, 0.00081, "small", False)

    out = tmp_path / "again.cgw"
    assert (
        cli.main(["export-weights", "specs/small.net", str(tmp_path / "w.npz"), "-o", str(out)])
        == 0
    )
    assert out.read_bytes() == (tmp_path / "w.cgw").read_bytes()

    capsys.readouterr()
    assert cli.main(["import-weights", "specs/medium.net", str(tmp_path / "w.cgw")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another network" in err


@pytest.mark.skipif(shutil.which("icpc") is not None, reason="icc is installed here")
def test_knc_program_is_emitted_without_icc(tmp_path: Path, in_repo, capsys) -> None:
    """No icc here: everything is written, with the build command and where to run it."""
    out = tmp_path / "knc"
    assert cli.main(["compile", "specs/small.net", "--target", "knc", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "not built: icpc (icc) is not installed here" in text and "-mmic" in text
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["build.sh", "chaosgen_api.h", "init.cgw", "main.cpp", "net.cpp", "run.sh"]
    )
    assert all(os.access(out / s, os.X_OK) for s in ("build.sh", "run.sh"))
    # The build script stops with a clear message where icc is missing.
    proc = subprocess.run(["sh", str(out / "build.sh")], capture_output=True, text=True)
    assert proc.returncode == 1 and "icpc not found" in proc.stderr
    # What icc -std=c++11 would compile, checked with g++ taking icc's side of every #if
    # (__assume_aligned stubbed): C++11 only, _mm_malloc declared, no AVX intrinsics needed; also
    # for Caffe's LeNet (momentum, weight decay, multipliers, lr_policy inv, 28x28, scale=).
    icc_side = ["-D__INTEL_COMPILER=1700", "-D__assume_aligned(p,a)=((void)0)"]
    lenet = tmp_path / "knc-lenet"
    assert cli.main(["compile", "specs/lenet.net", "--target", "knc", "--out", str(lenet)]) == 0
    for folder in (out, lenet):
        for extra, files in (
            (icc_side + ["-Wno-unknown-pragmas"], ["main.cpp", "net.cpp"]),
            (["-Wall", "-Wextra", "-pedantic", "-Werror"], ["main.cpp"]),
        ):
            proc = subprocess.run(
                ["g++", "-std=c++11", "-fopenmp", "-fsyntax-only", *extra, *files],
                cwd=folder,
                capture_output=True,
                text=True,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]


def test_knl_routes_to_the_program(in_repo, capsys) -> None:
    assert cli.main(["compile", "specs/small.net", "--target", "knl", "--emit", "cmd"]) == 0
    _, net = front_end("specs/small.net")
    want = native.program_command(net, COMPILERS["gcc"], TARGETS["knl"])
    assert capsys.readouterr().out.split() == list(want)
    assert want[-4:] == ("-o", "chaosgen-small", "main.cpp", "net.cpp")


# --- built here and trained on MNIST -------------------------------------------------------
@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("native-build")


@pytest.fixture(scope="module")
def small_lib(build_dir: Path):
    """The small net as chaosgen's own library (gcc, this machine)."""
    return chaosgen.compile(ROOT / "specs" / "small.net", cc="gcc", build_dir=build_dir)


@pytest.fixture(scope="module")
def raw_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four MNIST files gunzipped (as the program reads them)."""
    out = tmp_path_factory.mktemp("mnist-raw")
    for name, _, _ in data.FILES:
        (out / name.removesuffix(".gz")).write_bytes(gzip.decompress((MNIST / name).read_bytes()))
    return out


@pytest.fixture(scope="module")
def train_log_keys(raw_mnist: Path, build_dir: Path, tmp_path_factory) -> dict:
    """The keys of `chaosgen train --log` records (with --profile), from a tiny real run."""
    tmp = tmp_path_factory.mktemp("train")
    log = tmp / "log.jsonl"
    spec = str(ROOT / "specs" / "small.net")
    argv = ["train", spec, "--cc", "gcc", "--build-dir", str(build_dir), "--data", str(raw_mnist)]
    argv += ["--epochs", "1", "--limit", "32", "--val-limit", "32", "--test-limit", "32"]
    argv += ["--threads", "1", "--log", str(log), "--checkpoint-dir", str(tmp), "--quiet"]
    argv += ["--profile"]
    assert cli.main(argv) == 0
    return _keys(json.loads(log.read_text().splitlines()[0]))


def _keys(rec: dict) -> dict:
    return {
        "record": list(rec),
        "config": list(rec["config"]),
        "machine": list(rec["machine"]),
        "profile": {k: list(v) for k, v in rec.get("profile_us_per_image", {}).items()},
    }


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory):
    """program(cc): the small net's program directory, built here with `cc` (once per module)."""
    built: dict[str, Path] = {}

    def get(cc: str) -> Path:
        if cc not in built:
            out = tmp_path_factory.mktemp(f"program-{cc}")
            argv = ["compile", str(ROOT / "specs" / "small.net"), "--program", "--cc", cc]
            assert cli.main([*argv, "--out", str(out)]) == 0
            assert (out / "chaosgen-small").exists()
            built[cc] = out
        return built[cc]

    return get


@pytest.fixture(scope="module")
def mnist_test(raw_mnist: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test images and labels as chaosgen.data gives them."""
    images = data.pad_and_scale(data.read_images(raw_mnist / "t10k-images-idx3-ubyte"))
    return images, data.read_labels(raw_mnist / "t10k-labels-idx1-ubyte").astype(np.int32)


COMPILERS_HERE = [
    "gcc",
    pytest.param("clang", marks=pytest.mark.skipif(not HAVE_CLANG, reason="no clang++")),
]


@needs_mnist
@pytest.mark.parametrize("cc", COMPILERS_HERE)
def test_program_trains_on_mnist(
    cc: str, program, small_lib, raw_mnist, mnist_test, train_log_keys
) -> None:
    """Built here, run through run.sh on real MNIST; its log has chaosgen train's keys, and its
    weights, imported, give chaosgen's runtime the test error the program reported."""
    out = program(cc)
    n_test = 2000
    args = ["--limit", "3000", "--val-limit", "1000", "--test-limit", str(n_test)]
    args += ["--eta", "0.01", "--profile"]
    # gcc: run.sh gunzips the original files; clang: it copies already raw ones.
    env = {**os.environ, "DATA": str(MNIST if cc == "gcc" else raw_mnist), "THREADS": "2"}
    run = [str(out / "run.sh"), *args]
    proc = subprocess.run([*run, "--epochs", "1"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "epoch   1" in proc.stdout
    (rec,) = [json.loads(line) for line in (out / "run.jsonl").read_text().splitlines()]
    assert _keys(rec) == train_log_keys
    assert (rec["epoch"], rec["train_images"], rec["test_images"]) == (1, 3000, n_test)
    assert rec["config"]["threads"] == 2 and rec["config"]["network"] == "small"
    assert rec["test_error_rate"] < 0.2, rec  # 3000 images of the small net: about 10%

    cgw = out / "weights.cgw"
    assert cli.main(["import-weights", str(ROOT / "specs" / "small.net"), str(cgw)]) == 0
    ck = checkpoint.load(out / "weights.npz", small_lib.ir)
    assert (ck.epoch, ck.eta) == (1, 0.01 * 0.9)
    small_lib.params[:] = ck.params
    rt = Runtime(small_lib)
    images, labels = mnist_test
    st = rt.evaluate(rt.images(images[:n_test]), labels[:n_test], 2)
    assert abs(st.errors - rec["test_errors"]) <= 2, (st.errors, rec["test_errors"])
    assert st.loss == pytest.approx(rec["test_error"], rel=1e-3)

    # --resume continues from the weights file: epoch 2, eta decayed, the log appended.
    proc = subprocess.run(
        [*run, "--epochs", "2", "--resume", "--quiet"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in (out / "run.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2] and recs[1]["eta"] == pytest.approx(0.009)
    assert native.read_cgw(cgw).epochs == 2


FAKE_SSH = """#!/bin/sh
# stands in for ssh to a card: drop -t and the host, run the command line here
[ "$1" = -t ] && shift
shift
exec sh -c "$1"
"""
FAKE_SCP = """#!/bin/sh
# stands in for scp to and from a card: "mic0:PATH" is PATH here
[ "$1" = -q ] && shift
for dest; do :; done
while [ $# -gt 1 ]; do cp "${1#mic0:}" "${dest#mic0:}"; shift; done
"""


@needs_mnist
def test_knc_run_script_drives_a_card_over_ssh(program, raw_mnist, tmp_path, in_repo) -> None:
    """The knc run.sh against a stand-in card (ssh and scp on PATH that run and copy here; the
    card's folder has a space and a quote in its name), with the same sources built here by gcc:
    it copies the program, data and OpenMP runtime over, runs with the arguments intact, and
    copies the log and weights back."""
    knc = tmp_path / "knc"
    assert cli.main(["compile", "specs/small.net", "--target", "knc", "--out", str(knc)]) == 0
    shutil.copy(program("gcc") / "chaosgen-small", knc / "chaosgen-small")
    tools, libs = tmp_path / "bin", tmp_path / "mic-libs"
    tools.mkdir()
    libs.mkdir()
    for name, text in (("ssh", FAKE_SSH), ("scp", FAKE_SCP)):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    (libs / "libiomp5.so").write_text("")
    remote = tmp_path / "the card's dir"
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "DATA": str(raw_mnist),
           "MIC_LIBS": str(libs), "REMOTE": str(remote), "THREADS": "2"}
    args = ["--epochs", "1", "--limit", "500", "--val-limit", "200", "--test-limit", "200"]
    proc = subprocess.run([str(knc / "run.sh"), *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (rec,) = [json.loads(line) for line in (knc / "run.jsonl").read_text().splitlines()]
    assert (rec["train_images"], rec["test_images"], rec["config"]["threads"]) == (500, 200, 2)
    assert native.read_cgw(knc / "weights.cgw").epochs == 1
    assert (remote / "libiomp5.so").exists() and (remote / "chaosgen-small").exists()


@needs_mnist
def test_program_refuses_bad_input(program, raw_mnist: Path, tmp_path: Path) -> None:
    out = program("gcc")
    exe, init = str(out / "chaosgen-small"), str(out / "init.cgw")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([exe, *args], capture_output=True, text=True, cwd=tmp_path)

    gz = run("--data", str(MNIST), "--init", init)
    assert gz.returncode == 1 and "-ubyte.gz is there: gunzip it first" in gz.stderr
    (tmp_path / "train-images-idx3-ubyte").write_bytes(gzip.compress(b"\0\0\x08\x03"))
    gz = run("--data", str(tmp_path), "--init", init)
    assert gz.returncode == 1 and "is gzip-compressed: gunzip it first" in gz.stderr
    bad = run("--threads", "0")
    assert bad.returncode == 2 and "--threads must be an integer >= 1" in bad.stderr
    bad = run("--batch", "8", "--scheme", "delayed")  # as chaosgen train: the averaged scheme's
    assert bad.returncode == 2 and "--batch is the averaged scheme's" in bad.stderr
    _, medium = front_end(ROOT / "specs" / "medium.net")
    native.write_cgw(
        tmp_path / "m.cgw", native.Weights(np.zeros(medium.n_params), medium.digest())
    )
    other = run("--init", "m.cgw", "--data", str(raw_mnist))
    assert other.returncode == 1 and "weights of another network" in other.stderr
    # Before: --resume from initial weights trained at eta 0 (their eta), exit 0.
    fresh = run("--init", init, "--resume", "--data", str(raw_mnist), "--limit", "10")
    assert fresh.returncode == 1, fresh.stderr
    assert "init.cgw: no run to resume (0 epochs done, eta 0: initial weights)" in fresh.stderr
    _, small = front_end(ROOT / "specs" / "small.net")
    nan = np.zeros(small.n_params, np.float32)
    nan[7] = np.nan
    native.write_cgw(tmp_path / "nan.cgw", native.Weights(nan, small.digest(), 1, 0.01))
    bad = run("--init", "nan.cgw", "--data", str(raw_mnist), "--limit", "10")
    assert bad.returncode == 1 and "nan.cgw: the weights hold NaN or inf" in bad.stderr
    # chaosgen train's divergence bounds: eta 10 saturates the loss near 60 per image, no NaN
    limits = ["--limit", "2000", "--val-limit", "10", "--test-limit", "10", "--threads", "1"]
    bad = run("--init", init, "--data", str(raw_mnist), "--eta", "10", *limits)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "diverged in epoch 1: the mean loss per image was" in bad.stderr
    assert "above 6.9 (3 x ln 10, the loss of chance) (eta 10)" in bad.stderr
    assert not (tmp_path / "weights.cgw").exists()


# --- gcc and clang, avx2 and generic, against PyTorch --------------------------------------
@pytest.mark.parametrize("target", ["avx2", "generic"])
@pytest.mark.parametrize("cc", COMPILERS_HERE)
def test_builds_agree_with_torch(cc: str, target: str, build_dir: Path) -> None:
    pytest.importorskip("torch")
    from reference import chaosgen_run, compare, random_weights, torch_run

    if not TARGETS[target].runs_here():
        pytest.skip(f"this CPU cannot run {target} code")
    net = chaosgen.compile(ROOT / "specs" / "small.net", target=target, cc=cc, build_dir=build_dir)
    rng = np.random.default_rng(5)
    net.set_weights(random_weights(net.ir, rng))
    for label in (3, 8):
        x = rng.uniform(0.0, 1.0, (29, 29)).astype(np.float32)
        x[28, :] = x[:, 28] = 0.0
        compare(chaosgen_run(net, x, label), torch_run(net.ir, net.get_weights(), x, label))


@needs_mnist
def test_program_takes_28x28_and_normalisation_as_chaosgen_train(raw_mnist, tmp_path) -> None:
    """A 1x28x28 net with mean/std (the PyTorch MNIST example's): the program's images are those
    of chaosgen's runtime bit for bit (its pixel table and padding value are rendered from the
    same float32 steps), so its weights give chaosgen the test error the program reported."""
    spec = tmp_path / "n28.net"
    spec.write_text(
        "input size=30x28 mean=0.1307 std=0.3081\nconv maps=4 kernel=5 activation=relu\n"
        "maxpool window=2\noutput classes=10\ntrain eta=0.01 epochs=1\n"
    )
    out = tmp_path / "prog"
    assert cli.main(["compile", str(spec), "--program", "--cc", "gcc", "--out", str(out)]) == 0
    n_test = 1000
    args = ["--limit", "2000", "--val-limit", "500", "--test-limit", str(n_test), "--threads", "1"]
    proc = subprocess.run(
        [str(out / "chaosgen-n28"), "--data", str(raw_mnist), *args],
        cwd=out, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (rec,) = [json.loads(line) for line in (out / "run.jsonl").read_text().splitlines()]
    assert rec["config"]["fit"] == "pad" and rec["test_error_rate"] < 0.3, rec
    assert cli.main(["import-weights", str(spec), str(out / "weights.cgw")]) == 0
    net = chaosgen.compile(str(spec), build_dir=str(tmp_path / "b"))
    net.params[:] = checkpoint.load(out / "weights.npz", net.ir).params
    rt = Runtime(net)
    test = data.sets.load_dataset(raw_mnist)
    st = rt.evaluate(rt.images(test.test_images[:n_test]), test.test_labels[:n_test], 1)
    assert st.errors == rec["test_errors"]
    assert st.loss == pytest.approx(rec["test_error"], rel=1e-5)


# --- the program trains as chaosgen train does ----------------------------------------------
# Three nets on small files in the real formats (tests/test_datasets.py's writers): each program
# is run, then `chaosgen train` on the same data, seed and scheme, and the weights compared.
PARITY_NETS = {
    # momentum, weight decay, lr_policy inv, multipliers, dropout, normalisation, 28x28 IDX
    "mnist_sgd": (
        "input size=28x28 mean=0.1307 std=0.3081\n"
        "conv c1: maps=4 kernel=5 activation=relu bias_lr_mult=2\nmaxpool window=2\n"
        "dropout d1: rate=0.25\ndense ip1: units=16 activation=relu decay_mult=0.5\n"
        "output classes=10\ntrain epochs=2 eta=0.01 momentum=0.9 weight_decay=0.0005\n"
        "    lr_policy=inv gamma=0.0001 power=0.75 seed=3\n",
        "idx",
    ),
    # 3x32x32 (padding, strided ceil pooling), Nesterov, step policy, CIFAR-10 python batches
    "cifar_nesterov": (
        "input maps=3 size=32x32 mean=0.4914,0.4822,0.4465 std=0.2470,0.2435,0.2616\n"
        "conv c1: maps=6 kernel=5 pad=2 activation=relu\nmaxpool window=3 stride=2 round=ceil\n"
        "dense ip1: units=16 activation=relu\noutput classes=10\ntrain epochs=2 eta=0.01 "
        "momentum=0.9 nesterov=true weight_decay=0.004 lr_policy=step gamma=0.5 step_size=200 "
        "seed=5\n",
        "cifar10-python",
    ),
    # float images of another size (--fit center), 7 classes, no test split, cosine policy
    "npz_float": (
        "input maps=3 size=12x12 mean=0.1 std=2\nconv c1: maps=4 kernel=3 activation=tanh\n"
        "dense ip1: units=8 activation=relu\noutput classes=7\n"
        "train epochs=2 eta=0.02 lr_policy=cosine seed=2\n",
        "npz-float",
    ),
    # the same data cropped, momentum and weight decay under the delayed and averaged schemes
    "npz_crop": (
        "input maps=3 size=8x8\nconv c1: maps=3 kernel=3 activation=relu\noutput classes=7\n"
        "train epochs=2 eta=0.02 decay=0.5 momentum=0.8 weight_decay=0.001 seed=4\n",
        "npz-float",
    ),
}


def _parity_data(fmt: str, d: Path) -> Path:
    """Write data set `fmt` into d; returns what `chaosgen train --data` takes."""
    from test_datasets import write_cifar_py, write_idx

    if fmt == "idx":
        write_idx(d, gz=False)
        return d
    if fmt == "cifar10-python":
        write_cifar_py(d)
        return d
    d.mkdir()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 3, 10, 12)).astype(np.float32)  # images larger and smaller
    np.savez(d / "f.npz", x_train=x, y_train=np.arange(120) % 7)
    return d / "f.npz"


@pytest.fixture(scope="module")
def parity(tmp_path_factory: pytest.TempPathFactory, build_dir: Path):
    """parity(name): the spec, its program directory and its data (converted for the program
    where the format needs it), built and written once per module."""
    made: dict[str, tuple[Path, Path, Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path, Path, Path]:
        if name not in made:
            tmp = tmp_path_factory.mktemp(name)
            text, fmt = PARITY_NETS[name]
            spec = tmp / f"{name}.net"
            spec.write_text(text)
            out = tmp / "prog"
            argv = ["compile", str(spec), "--program", "--cc", "gcc", "--out", str(out)]
            assert cli.main([*argv, "--build-dir", str(build_dir)]) == 0
            source = _parity_data(fmt, tmp / "data")
            native_data = source
            if fmt != "idx":
                native_data = tmp / "converted"
                assert cli.main(["data", "convert", str(source), "--out", str(native_data)]) == 0
            made[name] = (spec, out, source, native_data)
        return made[name]

    return get


def _run_program(out: Path, *args: str) -> list[dict]:
    exe = next(p for p in out.iterdir() if p.name.startswith("chaosgen-"))
    proc = subprocess.run([str(exe), "--quiet", *args], cwd=out, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in (out / "run.jsonl").read_text().splitlines()]


VOLATILE = ("seconds", "seconds_train", "seconds_val", "seconds_test", "train_images_per_s",
            "val_images_per_s", "test_images_per_s", "machine")  # fmt: skip


@pytest.mark.parametrize(
    "name, args",
    [
        ("mnist_sgd", ["--limit", "300", "--val-limit", "100", "--test-limit", "100"]),
        ("cifar_nesterov", ["--limit", "300", "--val-split", "100"]),
        ("npz_float", ["--fit", "center"]),
        ("npz_crop", ["--fit", "crop", "--scheme", "delayed", "--update-every", "4"]),
        ("npz_crop", ["--fit", "crop", "--scheme", "averaged", "--batch", "8"]),
    ],
)
def test_program_follows_chaosgen_train(name, args, parity, build_dir, tmp_path) -> None:
    """One thread (sequential, or delayed and averaged on one thread), 2 epochs: the program's
    weights (and momentum's velocity) equal those of `chaosgen train` on the same data, seed and
    flags after every image, and so does every
    figure of its log but the timings and the paths. Tolerance: 1e-6 of the largest weight; both
    run the same generated kernels and the same shuffle, and agree bit for bit on gcc here (a
    program and a library built with other flags may round differently, hence not exactly 0).
    The first program run stops after epoch 1 and continues with --resume (but under cosine,
    whose length is the run's): the velocity travels in the weights file and the shuffle resumes
    where it stood; `chaosgen train --resume` from that epoch's imported weights ends with the
    same weights too."""
    spec, out, source, native_data = parity(name)
    common = [*(["--threads", "1"] if "--scheme" in args else ["--scheme", "sequential"]), *args]
    resume = name != "npz_float"  # cosine's length is the run's --epochs: not split in two
    handed = tmp_path / "handed"  # the program's first epoch, continued by chaosgen train
    if resume:
        _run_program(out, "--data", str(native_data), "--epochs", "1", *common)
        imported = ["import-weights", str(spec), str(out / "weights.cgw")]
        assert cli.main([*imported, "-o", str(handed / "last.npz")]) == 0
    again = ["--resume"] if resume else []
    got = _run_program(out, "--data", str(native_data), "--epochs", "2", *again, *common)
    if resume:  # as chaosgen train: nothing to do, nothing changed
        assert _run_program(out, "--epochs", "2", "--resume") == got
    log, ck_dir = tmp_path / "train.jsonl", tmp_path / "ck"
    train = ["train", str(spec), "--cc", "gcc", "--build-dir", str(build_dir), "--quiet"]
    train += ["--data", str(source), "--epochs", "2", *common]
    assert cli.main([*train, "--log", str(log), "--checkpoint-dir", str(ck_dir)]) == 0
    want = [json.loads(line) for line in log.read_text().splitlines()]

    _, net = front_end(spec)
    mine = native.checked_for(native.read_cgw(out / "weights.cgw"), net, "weights.cgw")
    theirs = checkpoint.load(ck_dir / "last.npz", net)
    tol = 1e-6 * float(np.abs(theirs.params).max())
    np.testing.assert_allclose(mine.params, theirs.params, rtol=0, atol=tol)
    assert (mine.velocity is None) == (theirs.velocity is None)
    if theirs.velocity is not None:
        np.testing.assert_allclose(mine.velocity, theirs.velocity, rtol=0, atol=tol)
    assert (mine.epochs, mine.eta) == (theirs.epoch, pytest.approx(theirs.eta))
    assert [list(r) for r in got] == [list(r) for r in want]  # the same keys in the same order
    for g, w in zip(got, want, strict=True):
        assert list(g["config"]) == list(w["config"])
        for k in set(w) - set(VOLATILE) - {"config"}:
            if w[k] is None:  # no test split: null in both logs (approx(None) is an error in
                assert g[k] is None, k  # pytest 9.2)
            else:
                assert g[k] == pytest.approx(w[k], rel=1e-5, nan_ok=True), k
        for k in set(w["config"]) - {"spec", "library", "epochs"}:  # epochs: 1, then resumed
            assert g["config"][k] == w["config"][k], k
    if resume:  # and chaosgen train, resumed from the program's weights, ends there too
        assert cli.main([*train, "--checkpoint-dir", str(handed), "--resume"]) == 0
        also = checkpoint.load(handed / "last.npz", net)
        np.testing.assert_allclose(also.params, theirs.params, rtol=0, atol=tol)
    if name == "mnist_sgd":
        assert got[1]["eta"] < got[0]["eta"] and "eta_end" in got[0]  # inv, per image
    if name == "npz_float":
        assert got[0]["test_images"] == 0 and got[0]["test_error"] is None
        assert got[0]["config"]["fit"] == "center"


def test_program_refuses_bad_data_in_one_line(parity, tmp_path: Path) -> None:
    """Every problem with the data: one line naming the file and what is wrong, exit 1."""
    _, out, source, converted = parity("cifar_nesterov")
    exe = str(out / "chaosgen-cifar_nesterov")

    def refused(d: Path, *words: str) -> None:
        proc = subprocess.run([exe, "--data", str(d)], cwd=out, capture_output=True, text=True)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        for w in words:
            assert w in proc.stderr, proc.stderr

    refused(source, f"{source}: this program reads CIFAR-10 python batches and .npz arrays "
            f"once converted: chaosgen data convert {source} --out DIR")  # fmt: skip
    refused(tmp_path, f"no data set found in {tmp_path}: expected MNIST")
    refused(tmp_path / "nowhere", f"{tmp_path / 'nowhere'}: No such file or directory")
    bad = tmp_path / "bad"
    shutil.copytree(converted, bad)
    images = bad / "train-images.idx"
    images.write_bytes(images.read_bytes()[:-5])
    refused(bad, f"{images}: the header promises 1536000 bytes, the file holds 1535995")
    images.write_bytes(b"\0\0\x09\x04" + (converted / "train-images.idx").read_bytes()[4:])
    refused(bad, f"{images}: not an IDX image file")
    shutil.copy(converted / "train-images.idx", images)
    labels = bad / "test-labels.idx"
    raw = bytearray(labels.read_bytes())
    raw[8 + 17] = 12  # the 18th test label: 12, and the net has 10 classes
    labels.write_bytes(bytes(raw))
    refused(bad, f"{labels}: label 12 at index 17", "has 10 classes")
    shutil.copy(converted / "test-labels.idx", labels)
    both = tmp_path / "both"
    shutil.copytree(converted, both)
    (both / "data_batch_1.bin").write_bytes(bytes(3073))
    refused(both, f"{both} holds more than one data set (CIFAR-10 batches converted .idx files)")
    gray = tmp_path / "gray"
    assert cli.main(["data", "convert", str(parity("mnist_sgd")[2]), "--out", str(gray)]) == 0
    refused(gray, "the data has 1 channel (1x28x28)", "takes 3", "input maps=1")


def test_run_sh_converts_other_formats_with_chaosgen(parity, tmp_path: Path) -> None:
    """DATA in a format the program does not read (CIFAR-10 python batches): run.sh converts it
    with the chaosgen on PATH (here this checkout's), once, and runs; without chaosgen it says
    where to convert, in one line."""
    _, out, source, _ = parity("cifar_nesterov")
    tools = tmp_path / "bin"
    tools.mkdir()
    shim = tools / "chaosgen"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))} exec '
                    f'{shlex.quote(sys.executable)} -m chaosgen.cli "$@"\n')  # fmt: skip
    shim.chmod(0o755)
    args = ["--epochs", "1", "--limit", "50", "--val-limit", "20", "--test-limit", "20", "--quiet"]
    env = {**os.environ, "DATA": str(source), "THREADS": "1", "PATH": f"{tools}:/usr/bin:/bin"}
    proc = subprocess.run([out / "run.sh", *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "data" / "train-images.idx").is_file()
    (rec,) = [json.loads(line) for line in (out / "run.jsonl").read_text().splitlines()]
    assert (rec["train_images"], rec["test_images"]) == (50, 20)
    shim.unlink()
    shutil.rmtree(out / "data")
    proc = subprocess.run([out / "run.sh", *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert f"chaosgen data convert {source} --out DIR" in proc.stderr


def test_convert_is_lossless_and_refuses_unsafe_pickles(tmp_path: Path, capsys) -> None:
    """The IDX files hold exactly what chaosgen.data.sets reads (uint8 pixels kept as bytes,
    float ones as float32); a pickle that names a callable is refused, nothing written."""
    from test_datasets import write_cifar_py

    from chaosgen.data import convert

    def idx(path: Path) -> np.ndarray:
        raw = path.read_bytes()
        dtype = {0x08: np.uint8, 0x0C: ">i4", 0x0D: ">f4"}[raw[2]]
        dims = [int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(raw[3])]
        return np.frombuffer(raw, dtype, offset=4 + 4 * raw[3]).reshape(dims)

    write_cifar_py(tmp_path / "c")
    assert cli.main(["data", "convert", str(tmp_path / "c"), "--out", str(tmp_path / "o")]) == 0
    d = sets.load_dataset(tmp_path / "c")
    x = idx(tmp_path / "o" / "train-images.idx")
    assert x.dtype == np.uint8 and x.shape == d.train_images.shape
    np.testing.assert_array_equal(sets._scaled(x), d.train_images)
    np.testing.assert_array_equal(idx(tmp_path / "o" / "test-labels.idx"), d.test_labels)
    floats = np.float32([[[[0.5, -3.25e-8]]]])
    np.testing.assert_array_equal(convert.stored_images(floats).astype(np.float32), floats)
    big = convert.stored_labels(np.array([3, 70000]))
    assert big.dtype == np.dtype(">i4") and list(big) == [3, 70000]

    capsys.readouterr()
    (tmp_path / "file").write_text("")
    assert cli.main(["data", "convert", str(tmp_path / "c"), "--out", str(tmp_path / "file")]) == 1
    assert "--out " + str(tmp_path / "file") + ": exists and is not a directory" in (
        capsys.readouterr().err
    )
    evil = tmp_path / "c" / "data_batch_2"
    evil.write_bytes(pickle.dumps({b"data": os.system, b"labels": [0]}, protocol=2))
    capsys.readouterr()
    assert cli.main(["data", "convert", str(tmp_path / "c"), "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(evil) in err and not (tmp_path / "p").exists()
