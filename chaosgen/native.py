"""The standalone native program: for targets whose code cannot be loaded by this Python (Xeon Phi
Knights Corner in native mode, Knights Landing), or on request (`--program`) for any target.

A program directory holds the generated network (`net.cpp`, the very file the library is built
from, runtime included), its C API header, `main.cpp` (templates/main.cpp.j2: MNIST, the paper's
training protocol, JSON lines, weights), the initial weights `init.cgw`, and `build.sh`/`run.sh`.
Weights travel as CGW1 files (format in main.cpp.j2 and docs/xeon-phi.md);
`chaosgen import-weights` turns one into a checkpoint, `chaosgen export-weights` the reverse.
Commands registered here: `targets`, `import-weights`, `export-weights`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, codegen, ir, update
from . import checkpoint as ckpt
from .build import CPP_NAME, atomic_write, cache_root, locked, make_dir, run_and_publish, write
from .errors import ChaosgenError, refuse_special_file
from .loader import initial_params
from .targets import (
    Compiler,
    Target,
    Version,
    default_compiler_for,
    describe_targets,
    get_compiler,
    get_target,
)

MAIN_NAME = "main.cpp"
INIT_NAME = "init.cgw"
SCRIPTS = ("build.sh", "run.sh")


# --- CGW1: the weights file of the native program -----------------------------------------------
CGW_MAGIC = b"CGW1"
# magic, n_params, IR hash (16 ASCII), epochs completed, flags (bit 0: partial; bit 1: the
# velocity follows), eta of the next epoch; then n_params float32, and with bit 1 n_params float32
# of momentum's velocity. Little-endian, 40 bytes of header.
_CGW_HEADER = struct.Struct("<4sI16sIId")
_PARTIAL = 1
_VELOCITY = 2


@dataclass(frozen=True)
class Weights:
    """The content of a CGW1 file."""

    params: np.ndarray  # float32 (n_params,)
    ir_hash: str
    epochs: int = 0
    eta: float = 0.0
    partial: bool = False
    velocity: np.ndarray | None = None  # float32 (n_params,): momentum's, when it is on


def cgw_bytes(w: Weights) -> bytes:
    """The CGW1 encoding of `w`."""
    ir_hash = w.ir_hash.encode("ascii")
    if len(ir_hash) != 16:
        raise ChaosgenError(f"IR hash '{w.ir_hash}' is not 16 characters")
    params = np.ascontiguousarray(w.params, "<f4")
    flags = (_PARTIAL if w.partial else 0) | (_VELOCITY if w.velocity is not None else 0)
    header = _CGW_HEADER.pack(CGW_MAGIC, params.size, ir_hash, w.epochs, flags, w.eta)
    if w.velocity is None:
        return header + params.tobytes()
    velocity = np.ascontiguousarray(w.velocity, "<f4")
    if velocity.size != params.size:
        raise ChaosgenError(f"a velocity of {velocity.size} floats for {params.size} parameters")
    return header + params.tobytes() + velocity.tobytes()


def write_cgw(path: str | Path, w: Weights) -> None:
    """Write a CGW1 file atomically."""
    atomic_write(Path(path), cgw_bytes(w))


def read_cgw(path: str | Path) -> Weights:
    """Read and check a CGW1 file (magic, size); the network is checked by `checked_for`."""
    refuse_special_file(path, "a CGW1 weights file")
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ChaosgenError(f"{path}: cannot read ({e.strerror or e})") from None
    return parse_cgw(raw, str(path))


def parse_cgw(raw: bytes, name: str = "<bytes>") -> Weights:
    """Decode CGW1 bytes (`name` is for messages)."""
    if len(raw) < _CGW_HEADER.size or raw[:4] != CGW_MAGIC:
        raise ChaosgenError(f"{name} is not a CGW1 weights file (it starts {raw[:4]!r})")
    _, n, ir_hash, epochs, flags, eta = _CGW_HEADER.unpack_from(raw)
    arrays = 2 if flags & _VELOCITY else 1
    if len(raw) != _CGW_HEADER.size + 4 * n * arrays:
        what = " and their velocity" if arrays == 2 else ""
        raise ChaosgenError(
            f"{name}: {len(raw)} bytes; a CGW1 file of {n} parameters{what} has "
            f"{_CGW_HEADER.size + 4 * n * arrays} (truncated?)"
        )
    params = np.frombuffer(raw, "<f4", n, _CGW_HEADER.size).astype(np.float32)
    velocity = None
    if arrays == 2:
        velocity = np.frombuffer(raw, "<f4", n, _CGW_HEADER.size + 4 * n).astype(np.float32)
    return Weights(params, ir_hash.decode("ascii", "replace"), epochs, eta,
                   bool(flags & _PARTIAL), velocity)  # fmt: skip


def checked_for(w: Weights, net: ir.Net, path: str | Path) -> Weights:
    """`w` if it belongs to `net` and is finite, else a ChaosgenError naming the mismatch."""
    if w.ir_hash != net.digest() or w.params.size != net.n_params:
        raise ChaosgenError(
            f"{path} holds weights of another network (IR {w.ir_hash}, {w.params.size} "
            f"parameters), not of '{net.name}' (IR {net.digest()}, {net.n_params})"
        )
    if not np.isfinite(w.params).all() or (
        w.velocity is not None and not np.isfinite(w.velocity).all()
    ):
        raise ChaosgenError(f"{path}: the weights contain NaN or inf")
    return w


# --- rendering ------------------------------------------------------------------------------
def program_name(net: ir.Net) -> str:
    """The executable's name."""
    return f"chaosgen-{net.name}"


def program_command(
    net: ir.Net,
    compiler: Compiler,
    target: Target,
    version: Version | None | str = "installed",
    cxx: str | None = None,
    out: str | None = None,
) -> tuple[str, ...]:
    """The exact command line that builds the program, run inside its directory (`version`: see
    Compiler.flags; `cxx` and `out` replace the compiler's name and the executable's)."""
    flags = compiler.program_flags(target, version)
    exe = out or program_name(net)
    libs = codegen.link_flags(net, target)
    return (cxx or compiler.cxx, *flags, "-o", exe, MAIN_NAME, CPP_NAME, *libs)


def _float_literal(v: float) -> str:
    """A float32 as an exact C++ literal (9 significant digits identify a float32)."""
    text = format(float(v), ".9g")
    return text + ("f" if ("." in text or "e" in text) else ".0f")


def _input_tables(net: ir.Net, per_row: int = 6) -> dict:
    """The program's pixel tables, per input map: v / 255 for the 256 byte values as
    chaosgen.data.sets scales them, normalised as chaosgen.data.fit.normalise does (float32 step
    for step), as exact C++ literals; the padding value (0 normalised); and the mean and factor
    that normalise float images."""
    from .data.fit import normalise
    from .data.sets import _scaled

    maps, norm = net.input.maps, net.norm
    values = np.repeat(_scaled(np.arange(256, dtype=np.uint8).reshape(1, 1, 1, 256)), maps, axis=1)
    normalise(values, norm)
    zero = np.zeros((1, maps, 1, 1), np.float32)
    normalise(zero, norm)
    rows = []
    for c in range(maps):
        lits = [_float_literal(v) for v in values[0, c, 0]]
        rows.append([", ".join(lits[i : i + per_row]) + "," for i in range(0, 256, per_row)])
    mean = np.broadcast_to(np.asarray(norm.mean if norm else (0.0,), np.float32), (maps,))
    std = np.asarray(norm.std if norm else (1.0,), np.float32)
    factor = np.broadcast_to(np.float32(norm.scale if norm else 1.0) / std, (maps,))
    return dict(
        pixel_rows=rows,
        pad_values=[_float_literal(v) for v in zero[0, :, 0, 0]],
        normalised=norm is not None,
        means=[_float_literal(v) for v in mean],
        factors=[_float_literal(v) for v in factor],
    )


def _update_rule(net: ir.Net) -> dict:
    """The spec's update rule as the program's constants (chaosgen.update; what
    chaosgen.train.Runtime._rule hands the runtime), and a one-line summary for --help."""
    t = net.training
    mults = update.multipliers(net)
    parts = [f"lr_policy {t.lr_policy}"]
    if t.lr_policy == "step":
        parts.append(f"gamma {t.gamma:g} every {t.step_size} iterations")
    elif t.lr_policy == "inv":
        parts.append(f"gamma {t.gamma:g} power {t.power:g}")
    if t.momentum:
        parts.append(f"{'Nesterov ' * t.nesterov}momentum {t.momentum:g}")
    if t.weight_decay:
        parts.append(f"weight_decay {t.weight_decay:g}")
    if mults is not None:
        parts.append("per-layer multipliers")
    return dict(
        momentum=repr(float(t.momentum)),
        nesterov=int(t.nesterov),
        weight_decay=repr(float(t.weight_decay)),
        lr_policy=t.lr_policy,
        policy_code=update.POLICY_CODES[t.lr_policy],
        per_iteration=t.lr_policy in update.PER_ITERATION,
        gamma=repr(float(t.gamma)),
        power=repr(float(t.power)),
        step_size=int(t.step_size),
        mults=None if mults is None else [[_float_literal(v) for v in row] for row in mults],
        summary=", ".join(parts),
    )


def render_program(
    net: ir.Net,
    target: Target,
    compiler: Compiler,
    lines: tuple[str, ...] = (),
    version: Version | None | str = "installed",
) -> dict[str, str | bytes]:
    """Every file of the program directory, by name (`version`: see Compiler.flags)."""
    from .train import MAX_LOSS_FACTOR, MAX_WEIGHT, PASSES, SCHEMES, Config

    s = net.input
    if s.volume:  # the program reads IDX images and fits them in 2D (templates/main.cpp.j2)
        raise ChaosgenError(
            f"{net.name}: the standalone program reads 2D images only, and this network takes "
            f"volumes ({s}); train it with `chaosgen train SPEC --data FILE.npz` on a host"
        )
    source = codegen.render(net, target, lines)
    t, cfg = net.training, Config()
    ctx = dict(
        version=__version__,
        net=dict(name=net.name, path_display=codegen.display_path(net.path)),
        target=target,
        compiler=compiler,
        ir_hash=net.digest(),
        header_name=codegen.HEADER_NAME,
        program=program_name(net),
        input=dict(maps=s.maps, h=s.h, w=s.w, size=s.size),
        layers=[lay.name for lay in net.layers],
        passes=PASSES,
        schemes=list(SCHEMES.items()),
        **_input_tables(net),
        rule=_update_rule(net),
        row_names=[lay.name for lay in net.trainable],
        divergence=dict(  # chaosgen train's bounds (Trainer._check_finite)
            max_weight=repr(float(MAX_WEIGHT)),
            max_loss_factor=repr(float(MAX_LOSS_FACTOR)),
            cross_entropy=net.output.loss == "cross_entropy",
        ),
        defaults=dict(
            epochs=t.epochs,
            eta=repr(float(t.eta)),
            decay=repr(float(t.decay)),
            seed=t.seed,
            update_every=cfg.update_every,
            batch=t.batch or cfg.batch,  # the spec's batch= (chaosgen.update), as train's
        ),
        flags=shlex.join(compiler.program_flags(target, version)),
        libs="".join(" " + shlex.quote(f) for f in source.libs),
        mic=target.name == "knc",
    )
    env = codegen.environment()
    return {
        CPP_NAME: source.cpp,
        source.header_name: source.header,
        MAIN_NAME: env.get_template("main.cpp.j2").render(ctx),
        "build.sh": env.get_template("build.sh.j2").render(ctx),
        "run.sh": env.get_template("run.sh.j2").render(ctx),
        INIT_NAME: cgw_bytes(Weights(initial_params(net, t.seed), net.digest())),
    }


# --- emitting and building ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Program:
    """A program directory and whether (and how) its executable was built."""

    directory: Path
    executable: Path
    command: tuple[str, ...]
    built: bool  # False: emitted only (compiler not here)
    cached: bool
    seconds: float
    files: tuple[str, ...]


def emit_program(
    spec_path: str | Path,
    target: str,
    cc: str | None = None,
    out: str | Path | None = None,
    build_dir: str | Path | None = None,
    force: bool = False,
) -> tuple[ir.Net, Target, Compiler, Program]:
    """Write the program directory and build it if the compiler is here (else only emit it)."""
    t0 = time.perf_counter()
    spec, net, tgt, compiler = _front_end(spec_path, target, cc)
    files = render_program(net, tgt, compiler, spec.lines)
    h = hashlib.sha256()
    for part in (
        *(files[k] for k in sorted(files)),
        compiler.cxx,
        compiler.version(),
        __version__,
    ):
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    name = f"{net.name}-{tgt.name}-{compiler.name}-{h.hexdigest()[:20]}"
    directory = Path(out) if out else cache_root(build_dir) / name
    exe = directory / program_name(net)
    cmd = program_command(net, compiler, tgt)
    make_dir(directory)  # these three: BuildError naming the path, saying who holds the lock
    with locked(directory, f"building the {net.name} program", (*files, exe.name)):
        cached = (
            exe.exists()
            and not force
            and all(
                (directory / k).exists()
                and (directory / k).read_bytes() == (v if isinstance(v, bytes) else v.encode())
                for k, v in files.items()
            )
        )
        if not cached:
            # Never leave a program beside sources it was not built from.
            exe.unlink(missing_ok=True)
            for k, v in files.items():
                write(directory / k, v)
                if k in SCRIPTS:
                    os.chmod(directory / k, 0o755)
            if compiler.resolve() is not None:
                _build(directory, exe, net, tgt, compiler)
    built = exe.exists()
    seconds = time.perf_counter() - t0
    return net, tgt, compiler, Program(directory, exe, cmd, built, cached, seconds, tuple(files))


def _front_end(spec: str | Path, target: str, cc: str | None):
    """The spec's AST and IR, the target, and the compiler (--cc, else the target's default)."""
    from .pipeline import front_end

    ast, net = front_end(spec)
    tgt = get_target(target)
    return ast, net, tgt, get_compiler(cc) if cc else default_compiler_for(tgt)


def _build(directory: Path, exe: Path, net: ir.Net, tgt: Target, compiler: Compiler) -> None:
    """Run the build command, publishing the executable atomically."""
    tmp = exe.with_name(f".{exe.name}.{os.getpid()}.tmp")
    run = program_command(net, compiler, tgt, cxx=compiler.resolve(), out=tmp.name)
    run_and_publish(
        run,
        directory,
        tmp,
        exe,
        f"building the {net.name} program for {tgt.name} with {compiler.name}",
    )


def cmd_compile_program(args: argparse.Namespace) -> int:
    """`chaosgen compile` for knc and knl, or with --program: emit (and build) the program."""
    if args.emit == "cmd":
        _, net, tgt, compiler = _front_end(args.spec, args.target, args.cc)
        print(shlex.join(program_command(net, compiler, tgt)))
        return 0
    net, tgt, compiler, prog = emit_program(
        args.spec, args.target, args.cc, args.out, args.build_dir, args.rebuild
    )
    d = prog.directory
    print(f"{net.name}: {args.spec} -> target {tgt.name} ({tgt.isa}) with {compiler.name}")
    for row in codegen.summary_rows(net):
        print("  " + row)
    print(f"program directory: {d}/ ({', '.join(prog.files)})")
    run = f"DATA=/path/to/data {d}/run.sh"
    if prog.built:
        how = "cached" if prog.cached else f"built in {prog.seconds:.2f} s"
        print(f"program: {prog.executable} ({how})")
        if tgt.runs_here():
            print(f"run it: {run} [--epochs N ...]   (--help lists the options)")
        else:
            print(f"it runs on a {tgt.description}, not here: copy {d}/ there and run ./run.sh")
    else:
        print(f"not built: {compiler.cxx} ({compiler.name}) is not installed here. Elsewhere:")
        print(f"  get it: {compiler.install}")
        print(f"  copy {d}/ there, then: ./build.sh && DATA=/path/to/data ./run.sh")
        print(f"  the build command: {shlex.join(prog.command)}   (docs/xeon-phi.md)")
    print(f"results back: chaosgen import-weights {args.spec} weights.cgw -o {net.name}.npz")
    return 0


# --- commands -------------------------------------------------------------------------------
def add_parser(sub) -> None:
    """`chaosgen targets`, `chaosgen import-weights`, `chaosgen export-weights`."""
    t = sub.add_parser(
        "targets", help="list targets and compilers: flags, what builds and runs here"
    )
    t.add_argument("--json", action="store_true", help="machine-readable output")
    t.set_defaults(func=cmd_targets)

    i = sub.add_parser(
        "import-weights", help="turn a native program's CGW1 weights into a checkpoint"
    )
    i.add_argument("spec", help="the network spec the program was generated from")
    i.add_argument("weights", help="CGW1 file (weights.cgw)")
    i.add_argument("-o", "--out", default=None, help="checkpoint .npz (default: WEIGHTS.npz)")
    i.set_defaults(func=cmd_import_weights)

    e = sub.add_parser("export-weights", help="write a checkpoint's weights as CGW1 (init.cgw)")
    e.add_argument("spec")
    e.add_argument("checkpoint", help="checkpoint .npz")
    e.add_argument("-o", "--out", default=None, help="CGW1 file (default: CHECKPOINT.cgw)")
    e.set_defaults(func=cmd_export_weights)


def cmd_targets(args: argparse.Namespace) -> int:
    """Print every target: ISA, vector width, alignment, and per compiler its flags and status."""
    rows = describe_targets()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        runs = "runs here" if r["runs_here"] else "does not run here"
        print(
            f"{r['name']:8} {r['isa']}: {r['vector_floats']} floats ({r['vector_bits']}-bit), "
            f"{r['align']}-byte aligned; builds a {r['output']}; {runs}"
        )
        print(f"{'':8} {r['description']}")
        for c in r["compilers"]:
            mark = "*" if c["name"] == r["default_compiler"] else " "
            status = "buildable here" if c["buildable"] else "not installed"
            if c["installed"] and not c["buildable"]:
                status = c["error"]
            print(f"{'':8} {mark} {c['name']:6} {' '.join(c['flags'])}   [{status}]")
    print("* the default compiler of the target (--cc picks another)")
    return 0


def cmd_import_weights(args: argparse.Namespace) -> int:
    """CGW1 -> checkpoint .npz (chaosgen.checkpoint), checked against the spec's network."""
    from .pipeline import front_end

    _, net = front_end(args.spec)
    w = checked_for(read_cgw(args.weights), net, args.weights)
    out = Path(args.out) if args.out else Path(args.weights).with_suffix(".npz")
    ckpt.save(
        out,
        ckpt.Checkpoint(
            params=w.params,
            epoch=w.epochs,
            eta=w.eta,
            ir_hash=w.ir_hash,
            net=net.name,
            partial=w.partial,
            velocity=w.velocity,
        ),
    )
    print(
        f"{out}: network {net.name}, {w.epochs} epochs done{' (interrupted)' if w.partial else ''}"
        f", eta next {w.eta:g}; evaluate: chaosgen eval {args.spec} --weights {out}"
    )
    return 0


def cmd_export_weights(args: argparse.Namespace) -> int:
    """Checkpoint .npz -> CGW1, e.g. as a native run's init.cgw (then run it with --resume)."""
    from .pipeline import front_end

    _, net = front_end(args.spec)
    ck = ckpt.load(args.checkpoint, net)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".cgw")
    write_cgw(out, Weights(ck.params, ck.ir_hash, ck.epoch, ck.eta, ck.partial, ck.velocity))
    print(f"{out}: network {net.name}, {ck.epoch} epochs done, eta next {ck.eta:g}")
    return 0
