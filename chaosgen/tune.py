"""`chaosgen tune`: time every weight-gradient form of each conv layer on this machine and record
the fastest in the build cache, where every later compile of the same network, target and
compiler on this CPU finds it (the generated code's header says which forms it uses and why).

The cost model in codegen picks a form without running anything; its estimates are off by up to
~1.4x on some layer shapes, and several forms are often within that of each other. Tuning builds
the network once per form (a small timing program around the same generated C++), times each
conv layer's weight gradient on real activations and deltas, and keeps the fastest per layer.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import __version__, child, codegen
from .build import cache_root, cached_program, write
from .errors import BuildError, UsageError
from .ir import Net
from .targets import Compiler, Target, cpu_model

REPEATS = 5  # timed means per form and layer in one run of the timing program; the best is kept
SWEEPS = 3  # runs of every timing program, interleaved
WINDOW_S = 0.004  # seconds of calls per mean
RUN_TIMEOUT_S = 600.0  # one run of a timing program takes seconds; past this it hangs


@dataclass(frozen=True, slots=True)
class Tuning:
    """The forms measured fastest, with every time measured (microseconds per image)."""

    forms: dict[str, str]
    times_us: dict[str, dict[str, float]]
    cpu: str
    # algorithm=auto layers: their three passes, {"direct": us, "fft": us}
    algorithm_us: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


def _templates_digest() -> str:
    """The templates' content: a record made with other kernels is stale."""
    h = hashlib.sha256()
    for p in sorted(codegen.template_dir().iterdir()):
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def record_path(net: Net, target: Target, compiler: Compiler, root: str | Path | None) -> Path:
    return (
        cache_root(root) / "tune" / f"{net.name}-{net.digest()}-{target.name}-{compiler.name}.json"
    )


def _stamp(compiler: Compiler) -> dict:
    return {
        "cpu": cpu_model(),
        "compiler_version": compiler.version(),
        "templates": _templates_digest(),
        "chaosgen": __version__,
    }


def load(net: Net, target: Target, compiler: Compiler, root: str | Path | None) -> Tuning | None:
    """The recorded tuning of this network for this target, compiler, CPU and templates."""
    if not target.host:
        return None
    stamp = _stamp(compiler)
    try:
        rec = json.loads(record_path(net, target, compiler, root).read_text())
        if any(rec.get(k) != v for k, v in stamp.items()):
            return None
        return Tuning(dict(rec["forms"]), dict(rec.get("times_us", {})), str(rec["cpu"]),
                      dict(rec.get("algorithm_us", {})))
    # None, not a record, or not readable: as if there were no record (the cost model decides).
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


TAPS_SHAPES = 3  # register blockings of the taps form tried per layer


def conv_forms(net: Net, target: Target) -> dict[str, tuple[str, ...]]:
    """Every conv layer's feasible weight-gradient forms (not of layers the spec puts on FFT)."""
    fft_only = {lay.name for lay in net.layers if getattr(lay, "algorithm", "") == "fft"}
    views = codegen.layer_views(net, target, ())
    return {v["name"]: tuple(v["grad_costs"]) for v in views
            if v["kind"] == "conv" and v["name"] not in fft_only}


def candidates(net: Net, target: Target) -> dict[str, list[str]]:
    """What tuning times per conv layer: each feasible form, the taps form in up to TAPS_SHAPES
    blockings of different widths ("taps/MxV": M maps x V vectors of taps), the cheapest the
    model estimates for each width."""
    out = {}
    forms = conv_forms(net, target)
    for lay in net.layers:
        if lay.name not in forms:
            continue
        cands = [f for f in forms[lay.name] if f != "taps"]
        if "taps" in forms[lay.name]:
            shapes = codegen.taps_shapes(
                lay.out_shape.maps, lay.in_shape.maps * lay.kh * lay.kw, target
            )
            seen: set[int] = set()  # the cheapest blocking for each width, cheapest widths first
            for m, v, _ in shapes:
                if v not in seen and len(seen) < TAPS_SHAPES:
                    seen.add(v)
                    cands.append(f"taps/{m}x{v}")
        out[lay.name] = cands
    return out


def _time_form(
    net: Net, target: Target, compiler: Compiler, forms: dict[str, str], root: str | Path | None,
    whole: bool = False,
) -> dict[str, float]:
    """Build (cached by content) and run the timing program for one assignment of forms: the
    weight gradient of each conv layer, or (`whole`) its three passes."""
    source = codegen.render(net, target, (), forms=forms)
    kinds = ("conv", "conv3d") if whole else ("conv",)  # 3D convs have one direct form
    views = [v for v in codegen.layer_views(net, target, (), forms) if v["kind"] in kinds]
    program = (
        codegen.environment()
        .get_template("tune.cpp.j2")
        .render(version=__version__, convs=views, repeats=REPEATS, window_s=WINDOW_S,
                whole=whole)
    )
    exe = cached_program(
        root,
        f"tune-{net.name}",
        {"net.cpp": source.cpp, codegen.HEADER_NAME: source.header, "tune.cpp": program},
        "tune.cpp",
        compiler,
        compiler.program_flags(target),
        f"building the tuning program of {net.name}",
        source.libs,
    )
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # it dies with chaosgen; stopped if it hangs
    return child.run_json(
        [exe], f"{exe}: the tuning program", timeout=RUN_TIMEOUT_S, env=env, error=BuildError
    )


def tune(
    net: Net, target: Target, compiler: Compiler, root: str | Path | None = None, say=print
) -> Tuning:
    """Time every feasible form of every conv layer; record and return the fastest."""
    if not target.host:
        raise UsageError(
            f"target {target.name} does not run on this host: tune it on the machine itself"
        )
    cands = candidates(net, target)
    times: dict[str, dict[str, float]] = {name: {} for name in cands}
    rounds = [
        {name: c[r] for name, c in cands.items() if r < len(c)}
        for r in range(max(map(len, cands.values()), default=0))
    ]  # one build per round
    for sweep in range(SWEEPS):  # the best of several sweeps: a burst of load hits one, not all
        for layers in rounds:
            if sweep == 0:
                say("  timing " + ", ".join(f"{n} {f}" for n, f in layers.items()) + " ...")
            for name, us in _time_form(net, target, compiler, layers, root).items():
                if name in layers:
                    old = times[name].get(layers[name], float("inf"))
                    times[name][layers[name]] = min(old, float(us))
    forms = {name: min(t, key=t.__getitem__) for name, t in times.items() if t}
    whole = _choose_algorithms(net, target, compiler, root, forms, say)
    save(net, target, compiler, root, forms, times, whole)
    return Tuning(forms, times, cpu_model(), whole)


def _choose_algorithms(net: Net, target: Target, compiler: Compiler, root: str | Path | None,
                       forms: dict[str, str], say) -> dict[str, dict[str, float]]:
    """For each algorithm=auto conv layer: time its three passes with the direct kernels (the
    weight-gradient form just measured fastest) and by FFT, interleaved, the best of SWEEPS;
    forms[layer] becomes "fft" where FFT was faster. Returns {layer: {"direct": us, "fft": us}}."""
    auto = [lay.name for lay in net.layers if getattr(lay, "algorithm", "") == "auto"]
    whole: dict[str, dict[str, float]] = {name: {} for name in auto}
    if not auto:
        return whole
    forms.update({name: forms.get(name, "direct") for name in auto})  # 3D: no form timed
    by_fft = dict(forms, **{name: "fft" for name in auto})
    say("  timing " + ", ".join(auto) + " whole (forward and backward), direct and fft ...")
    algos = [("direct", forms), ("fft", by_fft)]
    try:  # built once here: without FFTW the auto layers stay direct, and tuning goes on
        _time_form(net, target, compiler, by_fft, root, True)
    except BuildError as e:
        if "FFTW" not in str(e):
            raise
        say(f"  {e}: FFT not timed, the auto layers stay direct")
        algos = algos[:1]
    for _ in range(SWEEPS):
        for algo, assignment in algos:
            for name, us in _time_form(net, target, compiler, assignment, root, True).items():
                if name in whole:
                    whole[name][algo] = min(whole[name].get(algo, float("inf")), float(us))
    for name, t in whole.items():
        if t.get("fft", float("inf")) < t["direct"]:
            forms[name] = "fft"
    return whole


def save(
    net: Net,
    target: Target,
    compiler: Compiler,
    root: str | Path | None,
    forms: dict[str, str],
    times: dict[str, dict[str, float]],
    algorithm_us: dict[str, dict[str, float]] | None = None,
) -> Path:
    """Record forms (and the times that chose them) for `load` to find."""
    rec = {
        "net": net.name,
        "ir_hash": net.digest(),
        "target": target.name,
        "compiler": compiler.name,
        **_stamp(compiler),
        "forms": forms,
        "times_us": times,
        "algorithm_us": algorithm_us or {},
    }
    path = record_path(net, target, compiler, root)
    write(path, json.dumps(rec, indent=1) + "\n")  # a BuildError naming the path if refused
    return path


def add_parser(sub) -> None:
    """`chaosgen tune`."""
    from .options import add_compile_options

    p = sub.add_parser(
        "tune", help="time the kernel forms of each conv layer here; keep the fastest"
    )
    add_compile_options(p)
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from .pipeline import front_end
    from .targets import default_compiler_for, get_compiler, get_target

    _, net = front_end(args.spec)
    target = get_target(args.target)
    compiler = get_compiler(args.cc) if args.cc else default_compiler_for(target)
    views = codegen.layer_views(net, target, ())
    model = {v["name"]: v["grad_form"] for v in views if v["kind"] == "conv"}
    t = tune(net, target, compiler, args.build_dir)
    print(f"{net.name} on {t.cpu} ({target.name}, {compiler.name}): weight gradient, us per image")
    for name, row in t.times_us.items():
        cells = "  ".join(f"{f} {us:.2f}" for f, us in row.items())
        print(f"  {name:8} {cells}   -> {t.forms[name]} (model: {model[name]})")
    if t.algorithm_us:
        print("whole layer (forward, backward data, weight gradient), us per image")
    for name, row in t.algorithm_us.items():
        cells = "  ".join(f"{a} {us:.2f}" for a, us in row.items())
        print(f"  {name:8} {cells}   -> {'fft' if t.forms[name] == 'fft' else 'direct'}")
    print(
        f"recorded in {record_path(net, target, compiler, args.build_dir)}; "
        "compile and train use it from now on"
    )
    return 0
