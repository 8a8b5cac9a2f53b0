"""The compiler as a short chain of named steps: parse, check, render, build, load."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from . import build as build_mod
from . import codegen, tune
from .check import check
from .ir import Net
from .loader import Net as LoadedNet
from .loader import probe
from .parse import Spec, parse_file
from .targets import Compiler, Target, default_compiler_for, get_compiler, get_target


@dataclass(frozen=True, slots=True)
class Compiled:
    """Every intermediate form of one compilation."""

    spec: Spec
    net: Net
    target: Target
    compiler: Compiler
    source: codegen.Source
    build: build_mod.Build | None


def front_end(path: str | Path) -> tuple[Spec, Net]:
    """Parse and check a spec file."""
    spec = parse_file(path)
    return spec, check(spec)


def compile_spec(
    path: str | Path,
    target: str = "native",
    cc: str | None = None,
    build_dir: str | Path | None = None,
    force: bool | None = None,
    build: bool = True,
) -> Compiled:
    """Spec file -> AST -> IR -> C++ -> (cached) shared library."""
    spec, net = front_end(path)
    tgt = get_target(target)
    compiler = get_compiler(cc) if cc else default_compiler_for(tgt)
    tuned = tune.load(net, tgt, compiler, build_dir)
    source = codegen.render(net, tgt, spec.lines, forms=tuned.forms if tuned else None,
                            tuned_on=tuned.cpu if tuned else None)
    built = None
    if build:
        # A library that runs here is loaded once before it is published; another is checked
        # only for being a binary of the right kind (build.run_and_publish).
        verify = functools.partial(probe, net=net, header=source.header)
        built = build_mod.build(
            source,
            net.name,
            tgt,
            compiler,
            root=build_dir,
            force=force,
            verify=verify if tgt.runs_here() else None,
        )
    return Compiled(spec, net, tgt, compiler, source, built)


def compile(
    path: str | Path,
    target: str = "native",
    cc: str | None = None,
    build_dir: str | Path | None = None,
) -> LoadedNet:
    """Build (cached) for this machine and load with cffi: the Python API's entry point. The Net
    starts from the spec's initial weights. Errors: SpecError (every problem of the spec, at
    file:line:col), BuildError (the compiler, the cache), UsageError (an unknown target or
    compiler, or a target that does not run here)."""
    c = compile_spec(path, target=target, cc=cc, build_dir=build_dir)
    if not c.target.host:
        from .errors import UsageError

        raise UsageError(f"target {c.target.name} does not run on this host; it cannot be loaded")
    assert c.build is not None
    return LoadedNet(c.net, c.build.library, c.source.header)


def load(
    spec: str | Path,
    weights: str | Path,
    target: str = "native",
    cc: str | None = None,
    build_dir: str | Path | None = None,
) -> LoadedNet:
    """compile(spec) with its weights from `weights` (a chaosgen checkpoint or an .npz keyed like
    get_weights(); see Net.load): ready for forward() and evaluate()."""
    net = compile(spec, target=target, cc=cc, build_dir=build_dir)
    net.load(weights)
    return net
