"""ONNX export and import (issue 14), checked by the other side's runtime: onnxruntime runs the
exported models on real MNIST images against chaosgen's compiled forward; PyTorch's own exporter
writes the models chaosgen imports, and PyTorch's outputs are the oracle for them."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import random_weights
from specgen import net_descs, plain_text

import chaosgen
from chaosgen import checkpoint, cli
from chaosgen.check import check
from chaosgen.data import read_images
from chaosgen.data.fit import normalise
from chaosgen.interop.nettext import f32
from chaosgen.parse import parse_text
from chaosgen.pipeline import front_end

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from chaosgen.interop.onnx_export import to_onnx  # noqa: E402
from chaosgen.interop.onnx_import import import_onnx  # noqa: E402

TOL = 1e-5  # max abs difference of the outputs (issue 14)
# Random specs compiled and run through onnxruntime per run (~1 s each); more for a soak test.
RANDOM_NETS = int(os.environ.get("CHAOSGEN_TEST_RANDOM_ONNX_NETS", "10"))
IMAGES = 64


@pytest.fixture(scope="module")
def mnist() -> np.ndarray:
    """The first IMAGES test images of real MNIST: float32 (n, 28, 28) in [0, 1]."""
    path = Path(DATA)
    name = next((n for n in ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte")
                 if (path / n).exists()), None)
    if name is None:
        pytest.skip(f"no MNIST in {DATA}")
    return read_images(path / name)[:IMAGES].astype(np.float32) / 255


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("interop-build")


def images_for(net, mnist: np.ndarray) -> np.ndarray:
    """(n, maps, h, w) pixels from real MNIST for `net`'s input: the images padded (bottom,
    right) or cut to h x w, map k taken k pixels further down and right; on a volume
    (n, maps, d, h, w), plane z taken z pixels further again."""
    s = net.input
    out = np.zeros((len(mnist), s.maps, s.depth, s.h, s.w), np.float32)
    for k in range(s.maps):
        for z in range(s.depth):
            src = mnist[:, k + z : k + z + s.h, k + z : k + z + s.w]
            out[:, k, z, : src.shape[1], : src.shape[2]] = src
    return out.reshape(len(mnist), s.maps, *s.dims)


def run_onnx(model, x: np.ndarray) -> np.ndarray:
    """onnxruntime's outputs for a batch."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def run_chaosgen(loaded, x: np.ndarray) -> np.ndarray:
    """chaosgen's compiled forward, image by image, after the input's normalisation (which
    chaosgen applies when it loads data)."""
    x = x.copy()
    normalise(x, loaded.ir.norm)
    return np.stack([loaded.forward(img) for img in x])


def agreement(loaded, weights: dict, mnist: np.ndarray) -> float:
    """Max abs difference between onnxruntime on the export and chaosgen's forward."""
    loaded.set_weights(weights)
    x = images_for(loaded.ir, mnist)
    model = to_onnx(loaded.ir, weights)  # onnx.checker runs inside
    got, want = run_onnx(model, x), run_chaosgen(loaded, x)
    assert got.shape == want.shape
    return float(np.abs(got - want).max())


# --- export: shipped specs and random nets, onnxruntime against chaosgen ------------------------
@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "specs").glob("*.net")))
def test_shipped_spec_export_matches_onnxruntime(name, shipped_nets, build_dir, mnist) -> None:
    """Every shipped spec, random weights a little wider than the default init: onnxruntime's
    outputs on 64 real MNIST images equal chaosgen's forward within 1e-5."""
    loaded = shipped_nets.get(name) or chaosgen.compile(ROOT / "specs" / f"{name}.net",
                                                        build_dir=build_dir)
    weights = random_weights(loaded.ir, np.random.default_rng(14))
    err = agreement(loaded, weights, mnist)
    print(f"\n{name}: onnxruntime vs chaosgen max abs error {err:.2e}")
    assert err <= TOL


NORMS = st.sampled_from(("", "mean=0.5 std=0.5", "mean=0.1307 std=0.3081 scale=1.5",
                         "scale=0.99609375", "mean=-0.25"))


@settings(max_examples=RANDOM_NETS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(desc=net_descs(max_hidden=4, max_side=9, dropout=True, geometry=True), norm=NORMS,
       seed=st.integers(0, 2**32 - 1))
def test_random_net_export_matches_onnxruntime(desc, norm, seed, build_dir, mnist) -> None:
    """Random nets of the test generator (pad, strides, floor and ceil pools, dropout, every
    activation and output), with an input normalisation: onnxruntime equals chaosgen."""
    text = re.sub(r"^input .*$", lambda m: f"{m.group(0)} {norm}", plain_text(desc),
                  count=1, flags=re.M)
    path = build_dir / f"r{hashlib.sha256(text.encode()).hexdigest()[:12]}.net"
    path.write_text(text)
    loaded = chaosgen.compile(path, build_dir=build_dir)
    weights = random_weights(loaded.ir, np.random.default_rng(seed))
    assert agreement(loaded, weights, mnist) <= TOL, text


# --- import: the round trip ---------------------------------------------------------------------
def _same_network(a, b) -> None:
    """The same network: every layer's kind, name, shapes, sizes, activation, pool geometry as
    written, loss, the input and its normalisation, so the same IR digest (a checkpoint of one
    loads into the other). Training settings and inits are not part of a model."""
    def plain(net):
        d = net.describe()
        d.pop("training")
        for lay in d["layers"]:
            for k in ("init", "init_scale"):
                lay.pop(k, None)
        return d

    assert plain(a) == plain(b)
    assert a.digest() == b.digest()


@settings(max_examples=int(os.environ.get("CHAOSGEN_TEST_ROUND_TRIPS", "100")), deadline=None)
@given(desc=net_descs(max_hidden=5, max_side=9, max_maps=3, dropout=True, geometry=True),
       norm=NORMS, seed=st.integers(0, 2**32 - 1))
def test_round_trip_same_network_bitwise_weights(desc, norm, seed, tmp_path_factory) -> None:
    """export -> import gives the same network and bitwise the same weights (no compiler)."""
    text = re.sub(r"^input .*$", lambda m: f"{m.group(0)} {norm}", plain_text(desc),
                  count=1, flags=re.M)
    net = check(parse_text(text, "r.net"))
    weights = random_weights(net, np.random.default_rng(seed))
    folder = tmp_path_factory.mktemp("rt")
    (folder / "m.onnx").write_bytes(to_onnx(net, weights).SerializeToString())
    text2, net2, weights2 = import_onnx(folder / "m.onnx", folder / "r.net")
    _same_network(net, net2)
    assert net2.digest() == check(parse_text(text2, "r.net")).digest()
    assert list(weights2) == list(weights)
    for k in weights:
        assert weights2[k].dtype == np.float32
        assert weights2[k].tobytes() == weights[k].tobytes(), k


def test_cli_round_trip_with_checkpoint(tmp_path, in_repo, capsys) -> None:
    """`chaosgen export` from a checkpoint, `chaosgen import` back: the .net checks to the
    same IR digest as the spec (so the checkpoint's own network) and the .npz holds its
    weights bitwise."""
    _, net = front_end("specs/lenet.net")
    rng = np.random.default_rng(3)
    params = rng.standard_normal(net.n_params).astype(np.float32)
    ck = checkpoint.Checkpoint(params=params, epoch=1, eta=0.01, ir_hash=net.digest(),
                               net=net.name)
    checkpoint.save(tmp_path / "last.npz", ck)
    out = tmp_path / "lenet.onnx"
    assert cli.main(["export", "specs/lenet.net", "--weights", str(tmp_path / "last.npz"),
                     "-o", str(out)]) == 0
    assert "opset 17" in capsys.readouterr().out
    assert cli.main(["import", str(out), "-o", str(tmp_path / "back.net"),
                     "--weights", str(tmp_path / "back.npz")]) == 0
    _, back = front_end(tmp_path / "back.net")
    assert back.digest() == net.digest()
    with np.load(tmp_path / "back.npz") as z:
        assert len(z.files) == 2 * len(net.trainable)
        for lay in net.trainable:  # the blocks at the IR's offsets of the checkpoint's array
            n = lay.n_weights
            assert z[f"{lay.name}.weight"].tobytes() == params[lay.w_offset:][:n].tobytes()
            assert z[f"{lay.name}.bias"].tobytes() == params[lay.b_offset:][:lay.n_bias].tobytes()


# --- import: models written by PyTorch's exporter -----------------------------------------------
def torch_models(torch) -> dict:
    """Plain Sequential models of every supported layer, in PyTorch's default init, with their
    input shapes."""
    nn = torch.nn

    class ScaledTanh(nn.Module):
        """LeCun's 1.7159 tanh(2x/3), written as a user would."""

        def forward(self, x):
            return 1.7159 * torch.tanh(x * (2.0 / 3.0))

    class Normalise(nn.Module):
        """torchvision's Normalize as a module: (x - mean) / std per channel."""

        def __init__(self, mean, std):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

        def forward(self, x):
            return (x - self.mean) / self.std

    torch.manual_seed(0)
    return {
        "lenet": (nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
        ), (1, 28, 28)),
        "geometry": (nn.Sequential(
            Normalise([0.1307, 0.2], [0.3081, 0.5]),
            nn.Conv2d(2, 6, 5, padding=2), nn.Tanh(), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(6, 8, 3, stride=2, padding=1), ScaledTanh(),
            nn.AvgPool2d(3, 2, ceil_mode=True), nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(8 * 3 * 3, 16), nn.Sigmoid(), nn.Linear(16, 7), nn.Softmax(dim=1),
        ), (2, 29, 29)),
        "relu_after_pool": (nn.Sequential(  # Caffe's order: conv, pool, then the activation
            nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.ReLU(), nn.AvgPool2d(2, ceil_mode=False),
            nn.Flatten(), nn.Linear(4 * 6 * 6, 5),
        ), (1, 28, 28)),
        # ceil_mode where one axis gets a partial window (10 -> 4 columns) and the other's ceil
        # window would start past the input (2 -> 1 row, not ONNX shape inference's 2)
        "ceil_edge": (nn.Sequential(
            nn.Conv2d(1, 2, (5, 1)), nn.MaxPool2d((1, 2), (2, 3), ceil_mode=True), nn.Flatten(),
            nn.Linear(2 * 1 * 4, 3),
        ), (1, 6, 10)),
    }


def export_torch(torch, model, shape, path: Path) -> None:
    """torch.onnx.export's TorchScript exporter (dynamo=False: the default dynamo exporter needs
    onnxscript, which is not installed here); a dynamic batch."""
    torch.onnx.export(model.eval(), (torch.zeros(1, *shape),), str(path), dynamo=False,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}}, opset_version=17)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["lenet", "geometry", "relu_after_pool", "ceil_edge"])
def test_pytorch_model_imported_gives_pytorch_outputs(name, tmp_path, build_dir, mnist) -> None:
    """PyTorch model -> torch.onnx.export -> chaosgen import -> compile -> forward on real MNIST:
    PyTorch's own outputs within 1e-5."""
    torch = pytest.importorskip("torch")
    model, shape = torch_models(torch)[name]
    export_torch(torch, model, shape, tmp_path / "m.onnx")
    assert cli.main(["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / f"{name}.net"),
                     "--weights", str(tmp_path / "w.npz")]) == 0
    loaded = chaosgen.compile(tmp_path / f"{name}.net", build_dir=build_dir)
    with np.load(tmp_path / "w.npz") as z:
        loaded.set_weights(dict(z))
    x = images_for(loaded.ir, mnist)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    err = float(np.abs(run_chaosgen(loaded, x) - want).max())
    print(f"\n{name}: PyTorch -> ONNX -> chaosgen max abs error {err:.2e}")
    assert err <= TOL


# --- import: what cannot be imported ------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("layers, shape, message", [
    (lambda nn: [nn.Conv2d(1, 2, 3), nn.LeakyReLU(), nn.Flatten(),
              nn.Linear(2 * 6 * 6, 3)], (1, 8, 8),
     r"node '/1/LeakyRelu' \(LeakyRelu\): operator not supported \(supported: Conv, MaxPool"),
    (lambda nn: [nn.Conv2d(1, 2, 3, dilation=2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)], (1, 8, 8),
     r"node '/0/Conv' \(Conv\): dilations \[2, 2\] and group 1: chaosgen convolutions have "
     r"dilation 1"),
    (lambda nn: [nn.Conv2d(1, 2, 3, padding=(1, 0)), nn.MaxPool2d(2, padding=1), nn.Flatten(),
              nn.Linear(2 * 5 * 4, 3)], (1, 8, 8),
     r"node '/1/MaxPool' \(MaxPool\): pads \[1, 1, 1, 1\]: chaosgen's pools have no padding"),
    (lambda nn: [nn.Flatten(), nn.Linear(64, 3), nn.LogSoftmax(dim=1)], (1, 8, 8),
     r"node '/2/LogSoftmax' \(LogSoftmax\): operator not supported"),
    (lambda nn: [nn.Conv2d(1, 2, 3)], (1, 8, 8),
     r"the network must end in a Gemm \(Linear\)"),
])
def test_unsupported_model_is_one_line_naming_the_node(layers, shape, message, tmp_path,
                                                       capsys) -> None:
    """An operator or attribute chaosgen cannot express: exit 1, one line naming the node, the
    operator and what is supported; nothing written."""
    torch = pytest.importorskip("torch")
    export_torch(torch, torch.nn.Sequential(*layers(torch.nn)), shape, tmp_path / "m.onnx")
    rc = cli.main(["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.net"),
                   "--weights", str(tmp_path / "w.npz")])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("chaosgen: error: ") and re.search(message, err), err
    assert not (tmp_path / "m.net").exists() and not (tmp_path / "w.npz").exists()


def test_bad_files_are_one_line(tmp_path, in_repo, capsys) -> None:
    """A file that is not ONNX, an .npz with the wrong keys, a missing file, an output that
    cannot be written (checked before any work): one line each, exit 1, nothing written."""
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01not a model")
    np.savez(tmp_path / "wrong.npz", x=np.zeros(3, np.float32))
    cases = [
        (["import", str(tmp_path / "junk.onnx"), "-o", str(tmp_path / "a.net"), "--weights",
          str(tmp_path / "a.npz")], "is not an ONNX model"),
        (["export", "specs/small.net", "--weights", str(tmp_path / "wrong.npz"), "-o",
          str(tmp_path / "a.onnx")], "keys do not match network small: missing ['c1.weight'"),
        (["export", "specs/small.net", "--weights", str(tmp_path / "none.npz"), "-o",
          str(tmp_path / "a.onnx")], "not found"),
        (["export", "specs/small.net", "--weights", str(tmp_path / "wrong.npz"), "-o",
          str(tmp_path / "wrong.npz" / "a.onnx")], "cannot write -o there"),
        (["import", str(tmp_path / "junk.onnx"), "-o", str(tmp_path / "a.net"), "--weights",
          str(tmp_path / "wrong.npz" / "a.npz")], "cannot write --weights there"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not list(tmp_path.glob("a.*"))


def test_missing_onnx_names_the_extra(monkeypatch) -> None:
    """Without the onnx package: one line naming the extra to install."""
    import sys

    from chaosgen.errors import ChaosgenError
    from chaosgen.interop import need

    monkeypatch.setitem(sys.modules, "onnx", None)  # what an absent package looks like to import
    with pytest.raises(ChaosgenError, match=r"needs the 'onnx' package: pip install "
                                            r"'chaosgen\[onnx\]'"):
        need("onnx", "ONNX export")


def test_f32_writes_what_the_author_wrote() -> None:
    """Values that went through float32 come back as their shortest decimal."""
    for text in ("0.1", "0.2470", "0.99609375", "0.5", "1e-05", "1.7159"):
        v = float(np.float32(float(text)))
        assert np.float32(float(f32(v))) == np.float32(float(text))
        assert float(f32(v)) == float(text)


def test_branching_graph_is_refused(tmp_path, capsys) -> None:
    """A graph that is not a chain (a residual Add): one line naming the tensor read twice."""
    h = onnx.helper
    w = onnx.numpy_helper.from_array(np.ones((3, 16), np.float32), "fc.weight")
    nodes = [h.make_node("Flatten", ["input"], ["f"], name="flat", axis=1),
             h.make_node("Relu", ["f"], ["r"], name="relu"),
             h.make_node("Add", ["f", "r"], ["s"], name="residual"),
             h.make_node("Gemm", ["s", "fc.weight"], ["output"], name="fc", transB=1)]
    graph = h.make_graph(
        nodes, "res", [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
        [h.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 3])], initializer=[w])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "r.onnx")
    assert cli.main(["import", str(tmp_path / "r.onnx"), "-o", str(tmp_path / "r.net"),
                     "--weights", str(tmp_path / "r.npz")]) == 1
    err = capsys.readouterr().err
    assert "tensor 'f' is read by 2 nodes (Relu, Add" in err and len(err.splitlines()) == 1, err


MUTANT_SPEC = """
input   maps=2 size=12x11 mean=0.5 std=0.25
conv    c1: maps=3 kernel=3 pad=1 stride=2 activation=scaled_tanh
maxpool p1: window=2 stride=2x1 round=ceil
dropout d1: rate=0.25
avgpool p2: window=2 round=floor
dense   f1: units=5 activation=relu
conv    c2: maps=2 kernel=1 activation=sigmoid
output  out: classes=3
"""


@settings(max_examples=int(os.environ.get("CHAOSGEN_TEST_ONNX_MUTANTS", "200")), deadline=None)
@given(data=st.data())
def test_mutated_models_import_or_fail_cleanly(data, tmp_path_factory) -> None:
    """Mutants of an exported model (an attribute changed, removed or added; an operator
    renamed; an input rewired; an initializer dropped): the import succeeds with a network
    chaosgen's checker accepted, or fails with one ChaosgenError, never another exception."""
    from chaosgen.errors import ChaosgenError

    net = check(parse_text(MUTANT_SPEC, "m.net"))
    model = to_onnx(net, random_weights(net, np.random.default_rng(0)))
    nodes = model.graph.node
    node = nodes[data.draw(st.integers(0, len(nodes) - 1))]
    values = st.one_of(
        st.integers(-3, 5), st.floats(-2, 2, allow_nan=False),
        st.lists(st.integers(-1, 4), min_size=1, max_size=5), st.sampled_from(["SAME_UPPER", "x"]))
    how = data.draw(st.sampled_from(("set", "remove", "op", "rewire", "drop_init")))
    if how == "set":
        name = data.draw(st.sampled_from(("kernel_shape", "strides", "pads", "ceil_mode", "axis",
                                          "transB", "alpha", "group", "auto_pad", "dilations")))
        for a in [a for a in node.attribute if a.name == name]:
            node.attribute.remove(a)
        node.attribute.append(onnx.helper.make_attribute(name, data.draw(values)))
    elif how == "remove" and node.attribute:
        node.attribute.remove(node.attribute[data.draw(st.integers(0, len(node.attribute) - 1))])
    elif how == "op":
        node.op_type = data.draw(st.sampled_from(("Relu", "Tanh", "Gemm", "Conv", "MaxPool",
                                                  "Flatten", "Softmax", "Identity", "Dropout")))
    elif how == "rewire" and node.input:
        tensors = [t for n in nodes for t in n.output] + ["input"]
        node.input[0] = data.draw(st.sampled_from(tensors))
    elif how == "drop_init":
        inits = model.graph.initializer
        inits.remove(inits[data.draw(st.integers(0, len(inits) - 1))])
    folder = tmp_path_factory.mktemp("mutant")
    (folder / "m.onnx").write_bytes(model.SerializeToString())
    try:
        text, net2, _ = import_onnx(folder / "m.onnx", folder / "m.net")
    except ChaosgenError as e:
        assert "\n" not in str(e)
    else:
        assert check(parse_text(text, str(folder / "m.net"))) == net2


def test_round_trip_keeps_names_that_look_like_ours(tmp_path) -> None:
    """Layers called `input`, `output`, `network` or `N` (the batch dimension's name) and an
    output named otherwise: the round trip keeps every name, so the IR digest."""
    text = """
        input maps=1 size=8x8 mean=0.5 std=0.5 scale=2
        conv input: maps=2 kernel=3
        conv output: maps=2 kernel=3 activation=relu
        conv network: maps=2 kernel=1 activation=linear
        dense N: units=3
        output out: classes=2 loss=mse
    """
    net = check(parse_text(text, str(tmp_path / "names.net")))
    weights = random_weights(net, np.random.default_rng(1))
    (tmp_path / "m.onnx").write_bytes(to_onnx(net, weights).SerializeToString())
    _, back, _ = import_onnx(tmp_path / "m.onnx", tmp_path / "names.net")
    assert [lay.name for lay in back.layers] == ["input", "output", "network", "N", "out"]
    _same_network(net, back)
