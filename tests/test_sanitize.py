"""The generated code under AddressSanitizer and UndefinedBehaviorSanitizer, any report fatal.

A few nets (the shipped small one; odd shapes: odd and non-square inputs, strides that floor, 1x1
kernels, a dense layer first, both poolings, several maps; every weight-gradient form) are built
with -fsanitize=address,undefined into a standalone driver that trains them on 1 and 2 threads
with every scheme, evaluates, and runs forward and gradients alone. Its buffers have their exact
sizes, so a read past an image's stride, a work area or the weights is reported. The small net's
standalone program (main.cpp) trains on real MNIST the same way."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT
from proc import run

from chaosgen import codegen, data, native
from chaosgen.check import check
from chaosgen.parse import parse_text
from chaosgen.pipeline import front_end
from chaosgen.targets import get_compiler, native_target
from chaosgen.train import PASSES, SCHEMES
from chaosgen.tune import conv_forms

SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")
# Any report ends the program with this status (UBSan: no recovery; ASan: every error is fatal).
REPORT_EXIT = 86
OPTIONS = {
    "ASAN_OPTIONS": f"exitcode={REPORT_EXIT}:detect_leaks=1:abort_on_error=0",
    "UBSAN_OPTIONS": f"exitcode={REPORT_EXIT}:print_stacktrace=1:halt_on_error=1",
}
MNIST = Path(os.environ.get("CHAOSGEN_DATA") or ROOT.parent / "shared" / "data" / "mnist")
IMAGES = 100  # per training call: 400 images per thread count, over the four schemes

PROBE = """\
#include <vector>
int main() {
    std::vector<int> v(3);
#pragma omp parallel num_threads(2)
    v[1] = 1;
    return v[1] - 1;
}
"""

DRIVER = r"""
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
extern "C" {
#include "chaosgen_api.h"
}

// Exactly n floats, 64-byte aligned as chaosgen's loader gives them: the sanitizer poisons
// the bytes after them, so any read or write past the end is reported.
static float *floats(size_t n) {
    void *p = nullptr;
    if (posix_memalign(&p, 64, n * sizeof(float)) != 0) std::exit(2);
    std::memset(p, 0, n * sizeof(float));
    return static_cast<float *>(p);
}

static unsigned state = 12345u;
static float uniform(float lo, float hi) {  // a fixed LCG: the same numbers every run
    state = state * 1664525u + 1013904223u;
    return lo + (hi - lo) * float(state >> 8) / float(1u << 24);
}

static void fail(const char *what) { std::printf("FAIL %s\n", what); std::exit(1); }

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const long n = std::atol(argv[1]);
    const int n_passes = std::atoi(argv[2]);
    const int n_params = cg_n_params(), size = cg_image_size(), stride = cg_image_stride();
    const int classes = cg_output_size(), n_prof = cg_n_layers() * n_passes;
    float *params = floats(n_params), *images = floats(size_t(n) * stride);
    for (int i = 0; i < n_params; ++i) params[i] = uniform(-0.3f, 0.3f);
    for (long k = 0; k < n; ++k)  // the padding after each image stays zero, as chaosgen's
        for (int i = 0; i < size; ++i) images[k * stride + i] = uniform(0.f, 1.f);
    std::vector<int> labels(n), order(n);
    for (long k = 0; k < n; ++k) labels[k] = int(k % classes), order[k] = int((k * 7) % n);
    double *profile = new double[n_prof];
    for (int threads = 1; threads <= 2; ++threads) {
        for (int a = 3; a < argc; ++a) {
            volatile int stop = 0;
            volatile long progress = 0;
            cg_config cfg = {threads, std::atoi(argv[a]), 0.01f, 4, 8, &stop, &progress};
            cg_stats st = {};
            if (cg_train(params, images, labels.data(), order.data(), n, &cfg, &st, profile))
                fail("cg_train");
            if (st.images != n || !std::isfinite(st.loss)) fail("training stats");
        }
        cg_stats ev = {};
        if (cg_evaluate(params, images, labels.data(), n, threads, &ev) || ev.images != n)
            fail("cg_evaluate");
        std::printf("threads %d: loss %.4f errors %ld\n", threads, ev.loss / n, ev.errors);
    }
    float *work = floats(cg_work_floats()), *grads = floats(n_params);
    float *out = floats(classes), *image = floats(stride);
    std::memcpy(image, images + (n - 1) * size_t(stride), stride * sizeof(float));
    cg_forward(params, work, image, out);
    if (!std::isfinite(cg_gradients(params, work, image, 1 % classes, grads)))
        fail("cg_gradients");
    std::free(params), std::free(images), std::free(work), std::free(grads);
    std::free(out), std::free(image);
    delete[] profile;
    std::puts("clean");
    return 0;
}
"""

ODD = {
    # odd, non-square input of 3 maps; a 3x2 kernel with a stride that floors; a 3x5 pool
    "odd": """input maps=3 size=13x11
conv c1: maps=5 kernel=3x2 stride=2 activation=relu
maxpool window=3x5
dense d1: units=7 activation=tanh
output classes=3
""",
    # a dense layer first, then a 1x1 convolution and a 1x1 pool of its 1x1 output
    "dense_first": """input maps=2 size=5x3
dense d1: units=9 activation=sigmoid
conv c1: maps=4 kernel=1 activation=relu
avgpool window=1
output classes=4 activation=sigmoid loss=mse
""",
    # 1x1 kernel over several maps, average then max pooling, a 2x2 kernel between
    "maps": """input maps=4 size=9x9
conv c1: maps=6 kernel=1 activation=linear
avgpool window=3
conv c2: maps=8 kernel=2 activation=scaled_tanh
maxpool window=2
output classes=5
""",
    # stride 3 over 8 rows: rows 6 and 7 are never read; a wide kernel on a one-row input
    "strided": """input maps=1 size=8x17
conv c1: maps=3 kernel=3 stride=3 activation=relu
conv c2: maps=2 kernel=2x5 activation=sigmoid
output classes=2 activation=linear loss=mse
""",
}


@pytest.fixture(scope="module")
def sanitizers(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip, saying why, unless a tiny OpenMP program builds and runs with the sanitizers."""
    compiler = get_compiler(None)
    cxx = compiler.resolve()
    if cxx is None:
        pytest.skip(f"no C++ compiler ({compiler.cxx})")
    tmp = tmp_path_factory.mktemp("probe")
    (tmp / "probe.cpp").write_text(PROBE)
    cmd = [cxx, *SANITIZE, "-fopenmp", "probe.cpp", "-o", "probe"]
    built = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"{compiler.name} cannot build with the sanitizers: {built.stderr[-300:]}")
    ran = subprocess.run([tmp / "probe"], capture_output=True, text=True, env=_env())
    if ran.returncode != 0:
        pytest.skip(f"the sanitizer runtime does not run here: {ran.stderr[-300:]}")


def _env() -> dict[str, str]:
    return {**os.environ, **OPTIONS}


def _sanitized(cmd: list[str]) -> list[str]:
    """A build command at -O1 (the sanitizers' usual level: -O3 compiles several times slower)
    with the sanitizers on."""
    return [cmd[0], "-O1", *SANITIZE, *(f for f in cmd[1:] if f != "-O3")]


def _check(name: str, spec_text: str, tmp: Path, forms: dict[str, str] | None = None) -> str:
    """Render the net, build it into the driver with the sanitizers, train; return its output."""
    spec = parse_text(spec_text, f"{name}.net")
    net = check(spec)
    target = native_target()
    compiler = get_compiler(None)
    source = codegen.render(net, target, spec.lines, forms=forms)
    (tmp / "net.cpp").write_text(source.cpp)
    (tmp / source.header_name).write_text(source.header)
    (tmp / "driver.cpp").write_text(DRIVER)
    exe = tmp / "driver"
    build = [compiler.resolve(), *compiler.program_flags(target), "-o", exe.name]
    run(_sanitized([*build, "driver.cpp", "net.cpp"]), cwd=tmp)
    schemes = sorted(set(SCHEMES.values()))
    out = run([exe, str(IMAGES), str(len(PASSES)), *map(str, schemes)], cwd=tmp, env=_env())
    assert out.stdout.endswith("clean\n") and out.stderr == "", out.stdout + out.stderr
    return out.stdout


SMALL = (ROOT / "specs" / "small.net").read_text()
FORMS = ("wide", "dot", "lanes", "taps")


@pytest.mark.parametrize("form", ["model", *FORMS])
def test_small_net_is_clean(form: str, tmp_path: Path, sanitizers) -> None:
    """The shipped small net with the weight-gradient forms the cost model picks, and with each
    form forced on every conv layer (as `chaosgen tune` may choose)."""
    forms = None
    if form != "model":
        able = conv_forms(check(parse_text(SMALL, "small.net")), native_target())
        assert all(form in forms for forms in able.values()), able
        forms = dict.fromkeys(able, form)
    print(_check("small", SMALL, tmp_path, forms))


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_shapes_are_clean(name: str, tmp_path: Path, sanitizers) -> None:
    """Odd shapes, with the forms the cost model picks (between them: every form)."""
    print(_check(name, ODD[name], tmp_path))


@pytest.mark.skipif(
    not (MNIST / "train-images-idx3-ubyte.gz").is_file(), reason=f"MNIST not found in {MNIST}"
)
def test_small_program_is_clean(tmp_path: Path, sanitizers) -> None:
    """The standalone program (`chaosgen compile --program`: main.cpp reads the IDX files, writes
    the log and CGW1 weights) on real MNIST: one epoch on 1 thread, then --resume to epoch 2 on
    2 threads with --profile."""
    spec, net = front_end(ROOT / "specs" / "small.net")
    target, compiler = native_target(), get_compiler(None)
    for name, content in native.render_program(net, target, compiler, spec.lines).items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    (tmp_path / "mnist").mkdir()
    for name, _, _ in data.FILES:
        raw = gzip.decompress((MNIST / name).read_bytes())
        (tmp_path / "mnist" / name.removesuffix(".gz")).write_bytes(raw)
    cmd = native.program_command(net, compiler, target, cxx=compiler.resolve(), out="prog")
    run(_sanitized(list(cmd)), cwd=tmp_path)
    common = ["./prog", "--data", "mnist", "--limit", "300", "--val-limit", "100"]
    common += ["--test-limit", "100", "--quiet"]
    first = run([*common, "--threads", "1", "--epochs", "1"], cwd=tmp_path, env=_env())
    args = ["--threads", "2", "--epochs", "2", "--resume", "--profile"]
    second = run([*common, *args], cwd=tmp_path, env=_env())
    assert first.stderr == second.stderr == "", first.stderr + second.stderr
    logged = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["config"]["threads"]) for r in logged] == [(1, 1), (2, 2)]
    assert native.read_cgw(tmp_path / "weights.cgw").epochs == 2
