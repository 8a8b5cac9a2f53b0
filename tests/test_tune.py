"""chaosgen tune: every weight-gradient form is right (against the NumPy oracle), tuning records
the fastest per layer, and compiles after it use the record (and ignore a stale one)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import HAVE_FFTW, ROOT  # tune times FFT only where FFTW is installed
from reference import chaosgen_run, compare, numpy_run, random_weights

import chaosgen
from chaosgen import codegen, tune
from chaosgen.cli import main
from chaosgen.pipeline import front_end
from chaosgen.targets import default_compiler_for, native_target

# Conv layers of every shape class the forms treat differently: stride 2, non-square kernels,
# several input maps, a kernel row wider than a vector (18 > 16 lanes), maps not a multiple of 16.
SPECS = {
    "strided": """
        input maps=2 size=11x12
        conv maps=3 kernel=3x2 stride=2 activation=scaled_tanh
        maxpool window=1x2
        dense units=4 activation=tanh
        output classes=3
    """,
    "wide_kernel": """
        input size=20x24
        conv maps=17 kernel=2x18 activation=relu
        conv maps=5 kernel=3 activation=sigmoid
        output classes=4 activation=sigmoid loss=mse
    """,
    "small": (ROOT / "specs/small.net").read_text(),
}


@pytest.mark.parametrize("form", codegen.WEIGHT_FORMS)
def test_every_weight_gradient_form_matches_the_oracle(form: str, tmp_path) -> None:
    """Each form, forced through a tuning record on every conv layer that allows it, gives the
    oracle's gradients; the generated code's header names the forms it uses."""
    target, compiler = native_target(), default_compiler_for(native_target())
    forced_somewhere = False
    for name, text in SPECS.items():
        path = tmp_path / f"{name}.net"
        path.write_text(text)
        _, net = front_end(path)
        forms = {n: form for n, fs in tune.conv_forms(net, target).items() if form in fs}
        forced_somewhere |= bool(forms)
        tune.save(net, target, compiler, tmp_path / "build", forms, {})
        loaded = chaosgen.compile(path, build_dir=tmp_path / "build")
        header = (loaded.library.parent / "net.cpp").read_text().splitlines()[4]
        for layer in forms:
            assert f"{layer} {form}" in header, header
        rng = np.random.default_rng(17)
        loaded.set_weights(random_weights(loaded.ir, rng))
        for label in range(2):
            x = rng.uniform(-1, 1, (net.input.maps, net.input.h, net.input.w)).astype(np.float32)
            ref = numpy_run(loaded.ir, loaded.get_weights(), x, label)
            compare(chaosgen_run(loaded, x, label), ref)
    assert forced_somewhere


def test_tune_records_the_fastest_form_and_compile_uses_it(tmp_path, capsys) -> None:
    spec = tmp_path / "small.net"
    spec.write_text(SPECS["small"])
    build = tmp_path / "build"
    assert main(["tune", str(spec), "--build-dir", str(build)]) == 0
    out = capsys.readouterr().out
    _, net = front_end(spec)
    target, compiler = native_target(), default_compiler_for(native_target())
    rec = json.loads(tune.record_path(net, target, compiler, build).read_text())
    assert set(rec["forms"]) == {"c1", "c2"}
    for layer, times in rec["times_us"].items():
        assert set(times) == set(tune.candidates(net, target)[layer])  # every candidate timed
        assert {f.partition("/")[0] for f in times} == set(tune.conv_forms(net, target)[layer])
        assert all(t > 0 for t in times.values())
        whole = rec["algorithm_us"][layer]  # algorithm=auto: both algorithms timed whole
        assert set(whole) == ({"direct", "fft"} if HAVE_FFTW else {"direct"})
        assert all(t > 0 for t in whole.values())
        fastest = min(whole, key=whole.get)
        assert rec["forms"][layer] == ("fft" if fastest == "fft" else min(times, key=times.get))
        assert f"-> {rec['forms'][layer]}" in out
    cpp = (chaosgen.compile(spec, build_dir=build).library.parent / "net.cpp").read_text()
    assert "by `chaosgen tune`" in cpp.splitlines()[4]
    header = cpp.splitlines()[4]
    assert all(f"{k} {v.partition('/')[0]}" in header for k, v in rec["forms"].items())

    rec["templates"] = "0" * 16  # made with other kernels: ignored
    tune.record_path(net, target, compiler, build).write_text(json.dumps(rec))
    assert tune.load(net, target, compiler, build) is None
    cpp = (chaosgen.compile(spec, build_dir=build).library.parent / "net.cpp").read_text()
    assert "the cost model's choice" in cpp.splitlines()[4]


def test_tune_refuses_a_target_that_does_not_run_here(tmp_path, capsys) -> None:
    assert main(["tune", str(ROOT / "specs/small.net"), "--target", "knc",
                 "--build-dir", str(tmp_path)]) == 2
    assert "does not run on this host" in capsys.readouterr().err
