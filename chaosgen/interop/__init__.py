"""Networks in and out of chaosgen: `chaosgen export` (ONNX) and `chaosgen import` (ONNX, Caffe
prototxt). Each format is a translation between chaosgen's IR and the other side's, in a module
of its own; the optional packages it needs are imported there, through `need`."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

from ..errors import ChaosgenError, UsageError, printable

EXTRA = "onnx"  # pyproject.toml's optional extra that brings onnx and onnxruntime


def need(module: str, what: str) -> ModuleType:
    """Import an optional package, or one line saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ChaosgenError(
            f"{what} needs the '{module}' package: pip install 'chaosgen[{EXTRA}]' "
            f"(or pip install '.[{EXTRA}]' in a checkout)"
        ) from None


def check_output(path: str, option: str) -> Path:
    """A file chaosgen will write (atomically, at the end): refuse now, before any work, a
    directory or a FIFO there, or a folder that cannot be written (one line saying which)."""
    import tempfile

    from ..errors import refuse_special_file

    out = Path(path)
    if out.is_dir():
        raise ChaosgenError(f"{printable(path)}: is a directory; {option} wants a file name")
    refuse_special_file(out, option)
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name}.", suffix=".tmp"):
            pass
    except OSError as e:
        raise ChaosgenError(
            f"{printable(str(folder))}: cannot write {option} there ({e.strerror or e}); "
            "give a path in a writable folder"
        ) from None
    return out


def add_parser(sub) -> None:
    """`chaosgen export` and `chaosgen import`."""
    p = sub.add_parser("export", help="write a network and its weights as an ONNX model")
    p.add_argument("spec", help="network spec file (.net)")
    p.add_argument("--weights", required=True,
                   help="a chaosgen checkpoint, or an .npz keyed like get_weights()")
    p.add_argument("-o", "--output", required=True, help="the ONNX file to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "import", help="turn an ONNX model or a Caffe prototxt into a .net (and its weights)"
    )
    p.add_argument("model", help="an .onnx model, or a Caffe net .prototxt")
    p.add_argument("-o", "--output", required=True, help="the .net file to write")
    p.add_argument("--weights", help="ONNX: the .npz of weights to write (get_weights() keys)")
    p.add_argument("--solver", help="Caffe: the solver .prototxt (its settings become `train`)")
    p.add_argument("--input-shape", metavar="CxHxW",
                   help="Caffe: the input's shape where the data layer does not give it")
    p.set_defaults(func=cmd_import)


def cmd_export(args: argparse.Namespace) -> int:
    """Check the spec, read the weights, write and check the ONNX model."""
    from ..pipeline import front_end
    from .onnx_export import OPSET, export
    from .weights import read_weights

    check_output(args.output, "-o")
    _, net = front_end(args.spec)
    weights = read_weights(args.weights, net)
    size = export(net, weights, args.output)
    print(f"{printable(args.output)}: {net.name}, {len(net.layers)} layers, "
          f"{sum(w.size for w in weights.values()):,} weights, ONNX opset {OPSET}, "
          f"{size:,} bytes")
    return 0


def _is_onnx(path: Path) -> bool:
    """ONNX is binary protobuf; a Caffe prototxt is text. Decided by the name, else the bytes."""
    if path.suffix.lower() == ".onnx":
        return True
    if path.suffix.lower() in (".prototxt", ".pbtxt", ".txt"):
        return False
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return True  # let the ONNX reader say what is wrong with it
    return b"\0" in head or not head.isascii()


def cmd_import(args: argparse.Namespace) -> int:
    """Translate a model into spec text, check it as any spec, write it (and the weights)."""
    from ..build import atomic_write
    from ..errors import refuse_special_file

    src = Path(args.model)
    refuse_special_file(src, "a model")
    if not src.is_file():
        raise ChaosgenError(f"{printable(args.model)}: no such file")
    out = check_output(args.output, "-o")
    if args.weights:
        check_output(args.weights, "--weights")
    if _is_onnx(src):
        from .onnx_import import import_onnx
        from .weights import write_weights

        if args.solver or args.input_shape:
            raise UsageError("--solver and --input-shape are for Caffe prototxt files")
        if not args.weights:
            raise UsageError("an ONNX model's weights need a file: add --weights FILE.npz")
        text, net, weights = import_onnx(src, out)
        write_weights(args.weights, weights)
        saved = f" and {printable(args.weights)}"
    else:
        from .caffe import import_caffe

        if args.weights:
            raise UsageError(
                "Caffe weights (.caffemodel) are not imported; import the net without --weights"
            )
        text, net, warnings = import_caffe(src, out, solver=args.solver,
                                           input_shape=args.input_shape)
        for w in warnings:
            print(f"chaosgen: warning: {w}", file=sys.stderr)
        saved = ""
    try:
        atomic_write(out, text)
    except OSError as e:
        raise ChaosgenError(f"cannot write {printable(str(out))}: {e.strerror or e}") from None
    print(f"{printable(str(out))}{saved}: {net.name}, {len(net.layers)} layers, "
          f"input {net.input}, {net.output.out_shape.maps} classes")
    return 0
