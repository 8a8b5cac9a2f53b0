"""Caffe prototxt import (issue 14): the protobuf text grammar, LeNet and cifar10_quick with their
solvers against hand-written expectations from Caffe's semantics, cifar10_quick's forward against
a PyTorch transcription of the Caffe net, and the located errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import random_weights

import chaosgen
from chaosgen import cli
from chaosgen.check import check
from chaosgen.errors import ChaosgenError
from chaosgen.interop.caffe import import_caffe, parse_prototxt
from chaosgen.parse import parse_text
from chaosgen.pipeline import front_end

CAFFE = ROOT / "tests" / "caffe"

# cifar10_quick as Caffe defines it, written by hand: Caffe's pools size with ceil; relu1 follows
# pool1, which is the same as following conv1 (max commutes with relu); no activation on ip1.
CIFAR10_QUICK = """
network CIFAR10_quick
input   maps=3 size=32x32
conv    conv1: maps=32 kernel=5 pad=2 activation=relu init=gaussian std=0.0001 bias_lr_mult=2
maxpool pool1: window=3 stride=2 round=ceil
conv    conv2: maps=32 kernel=5 pad=2 activation=relu init=gaussian std=0.01 bias_lr_mult=2
avgpool pool2: window=3 stride=2 round=ceil
conv    conv3: maps=64 kernel=5 pad=2 activation=relu init=gaussian std=0.01 bias_lr_mult=2
avgpool pool3: window=3 stride=2 round=ceil
dense   ip1: units=64 activation=linear init=gaussian std=0.1 bias_lr_mult=2
output  ip2: classes=10 init=gaussian std=0.1 bias_lr_mult=2
"""


def _imported(tmp_path: Path, net: str, solver: str | None, shape: str):
    text, imported, warnings = import_caffe(CAFFE / net, tmp_path / "x.net",
                                            solver=str(CAFFE / solver) if solver else None,
                                            input_shape=shape)
    (tmp_path / "x.net").write_text(text)
    assert front_end(tmp_path / "x.net")[1] == imported  # the file is what was checked
    return imported, warnings


def _layers(net) -> dict:
    d = net.describe()
    d.pop("name")
    d.pop("training")
    return d


def test_lenet_is_specs_lenet(tmp_path) -> None:
    """Caffe's LeNet and solver: the layers, fillers and multipliers of specs/lenet.net (every
    IR field), and the solver as averaged steps of 64 (eta = base_lr / 64)."""
    net, warnings = _imported(tmp_path, "lenet_train_test.prototxt", "lenet_solver.prototxt",
                              "1x28x28")
    assert not warnings
    _, lenet = front_end(ROOT / "specs" / "lenet.net")
    assert _layers(net) == _layers(lenet)
    t = net.training
    assert (t.eta, t.batch, t.momentum, t.weight_decay, t.lr_policy, t.gamma, t.power) == (
        0.01 / 64, 64, 0.9, 0.0005, "inv", 0.0001, 0.75)


def test_cifar10_quick(tmp_path) -> None:
    """cifar10_quick: Caffe's ceil pools and its relu after pool1; the mean image is a warning
    that says what to write instead; the solver's fixed rate per averaged step of 100."""
    net, warnings = _imported(tmp_path, "cifar10_quick_train_test.prototxt",
                              "cifar10_quick_solver.prototxt", "3x32x32")
    assert _layers(net) == _layers(check(parse_text(CIFAR10_QUICK, "c.net")))
    assert [lay.out_shape.h for lay in net.layers] == [32, 16, 16, 8, 8, 4, 1, 1]
    assert len(warnings) == 1 and "mean_file" in warnings[0] and "mean=R,G,B" in warnings[0]
    t = net.training
    assert (t.eta, t.batch, t.momentum, t.weight_decay, t.lr_policy) == (
        0.001 / 100, 100, 0.9, 0.004, "fixed")


def test_cifar10_quick_forward_is_caffes(tmp_path) -> None:
    """The imported net compiled and run equals a PyTorch transcription of Caffe's layers in
    Caffe's order (conv1, pool1 with ceil, relu1, ...) on the same weights, float64."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net, _ = _imported(tmp_path, "cifar10_quick_train_test.prototxt", None, "3x32x32")
    loaded = chaosgen.compile(tmp_path / "x.net", build_dir=tmp_path / "build")
    rng = np.random.default_rng(5)
    w = random_weights(net, rng)
    loaded.set_weights(w)
    t = {k: torch.from_numpy(v).double() for k, v in w.items()}
    for _ in range(3):
        x = rng.uniform(0, 1, (3, 32, 32)).astype(np.float32)
        y = torch.from_numpy(x).double()[None]
        y = F.conv2d(y, t["conv1.weight"], t["conv1.bias"], padding=2)
        y = F.relu(F.max_pool2d(y, 3, 2, ceil_mode=True))
        y = F.relu(F.conv2d(y, t["conv2.weight"], t["conv2.bias"], padding=2))
        y = F.avg_pool2d(y, 3, 2, ceil_mode=True)
        y = F.relu(F.conv2d(y, t["conv3.weight"], t["conv3.bias"], padding=2))
        y = F.avg_pool2d(y, 3, 2, ceil_mode=True).flatten(1)
        y = F.linear(y, t["ip1.weight"], t["ip1.bias"])
        y = F.softmax(F.linear(y, t["ip2.weight"], t["ip2.bias"]), dim=1)[0].numpy()
        np.testing.assert_allclose(loaded.forward(x), y, atol=1e-6)


def test_protobuf_text_format(tmp_path) -> None:
    """The grammar: messages with and without a colon, `< >`, lists, adjacent strings, escapes,
    comments, `,` and `;` separators, repeated fields (the last wins for a singular read)."""
    (tmp_path / "a.prototxt").write_text(
        'name: "a" "b\\"c"  # comment\n m: { x: 1, y: -2.5e-3; } n < z: WORD > '
        "l: [1, 2 ,3] s: 'q' x: 4 x: 5f\n")
    msg, _ = parse_prototxt(tmp_path / "a.prototxt")
    assert msg.get("name") == 'ab"c'
    assert msg.sub("m").get("x") == "1" and msg.sub("m").get("y") == "-2.5e-3"
    assert msg.sub("n").get("z") == "WORD"
    assert msg.ints("l", 0) == [1, 2, 3] and msg.get("s") == "q"
    assert [f.value for f in msg.all("x")] == ["4", "5"] and msg.get("x") == "5"


LRN = """name: "n"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
        convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "norm1" type: "LRN" bottom: "c" top: "n" }
"""


@pytest.mark.parametrize("text, shape, where, message", [
    (LRN, None, "6:23", "layer 'norm1' of type LRN is not supported (supported: Input, Data"),
    ('name: "x"\nlayer { name: "a" type: }\n', None, "2:25",
     "unexpected '}' (protobuf text format)"),
    (LRN.replace('kernel_size: 3 } }', 'kernel_size: 3 } }\nlayer { name: "p" type: "Pooling" '
                 'bottom: "c" top: "p" pooling_param { kernel_size: 1 stride: 4 } }')
        .replace('layer { name: "norm1" type: "LRN" bottom: "c" top: "n" }\n', ""),
     None, "6:87", "stride 4x4 beyond window 1x1"),
    ('layer { name: "d" type: "Data" top: "data" }\n', None, "1:19",
     "the Data layer does not give the images' shape; add --input-shape CxHxW"),
    (LRN.replace('type: "LRN"', 'type: "ReLU"'), None, "1:1",
     "the net must end in an InnerProduct"),
])
def test_located_errors(text, shape, where, message, tmp_path, capsys) -> None:
    """What chaosgen cannot express: gcc-style file:line:col, the line and a caret; exit 1;
    nothing written."""
    (tmp_path / "n.prototxt").write_text(text)
    argv = ["import", str(tmp_path / "n.prototxt"), "-o", str(tmp_path / "n.net")]
    assert cli.main(argv + (["--input-shape", shape] if shape else [])) == 1
    err = capsys.readouterr().err
    assert f"n.prototxt:{where}: error: {message}" in err, err
    assert "Traceback" not in err and not (tmp_path / "n.net").exists()


def test_weights_refused_for_caffe(tmp_path, capsys) -> None:
    """Caffe's .caffemodel weights are not imported: a usage error, not a silent skip."""
    assert cli.main(["import", str(CAFFE / "lenet_train_test.prototxt"), "-o",
                     str(tmp_path / "l.net"), "--weights", str(tmp_path / "l.npz")]) == 2
    assert "not imported" in capsys.readouterr().err


@settings(max_examples=int(os.environ.get("CHAOSGEN_TEST_CAFFE_MUTANTS", "200")), deadline=None)
@given(data=st.data())
def test_mutated_prototxt_imports_or_fails_cleanly(data, tmp_path_factory) -> None:
    """Mutants of the cifar10_quick fixture (a token deleted, duplicated or replaced by another
    value): a net chaosgen's checker accepted, or one ChaosgenError (a located one for the
    file), never another exception."""
    text = (CAFFE / "cifar10_quick_train_test.prototxt").read_text()
    tokens = re.findall(r'"[^"]*"|[^\s{}:<>\[\]]+|[{}:<>\[\]]', text)
    i = data.draw(st.integers(0, len(tokens) - 1))
    how = data.draw(st.sampled_from(("delete", "duplicate", "replace")))
    if how == "delete":
        tokens[i] = ""
    elif how == "duplicate":
        tokens[i] = f"{tokens[i]} {tokens[i]}"
    else:
        tokens[i] = data.draw(st.sampled_from(
            ("0", "-1", "1.5", "99999", '"x"', "MAX", "AVE", '"ReLU"', '"LRN"', "{ }", "[1, 2]",
             "true", '"Pooling"', '"InnerProduct"', "kernel_h: 2")))
    folder = tmp_path_factory.mktemp("caffe-mutant")
    (folder / "m.prototxt").write_text(" ".join(tokens))
    try:
        out, net, _ = import_caffe(folder / "m.prototxt", folder / "m.net", input_shape="3x32x32")
    except ChaosgenError:
        pass
    else:
        assert check(parse_text(out, str(folder / "m.net"))) == net


DEPLOY = """name: "deploy"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: [1, 3, 12, 10] } } }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
        convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 stride: 2 pad_h: 1 pad_w: 0
                            weight_filler { type: "msra" } } }
layer { name: "s" type: "Sigmoid" bottom: "c" top: "c" }
layer { name: "g" type: "Pooling" bottom: "c" top: "g"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "d" type: "Dropout" bottom: "g" top: "g" dropout_param { dropout_ratio: 0.3 } }
layer { name: "fc" type: "InnerProduct" bottom: "g" top: "fc"
        param { lr_mult: 0.5 decay_mult: 0 } inner_product_param { num_output: 6 } }
layer { name: "t" type: "TanH" bottom: "fc" top: "fc" }
layer { name: "out" type: "InnerProduct" bottom: "fc" top: "out"
        inner_product_param { num_output: 3
                              weight_filler { type: "uniform" min: -0.1 max: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "out" top: "prob" }
"""


def test_deploy_net_with_every_layer_kind(tmp_path) -> None:
    """An Input layer's shape, kernel_h/_w and pad_h/_w, msra and uniform fillers, a global
    average pool, dropout, multipliers, TanH and Sigmoid, a deploy Softmax."""
    (tmp_path / "d.prototxt").write_text(DEPLOY)
    text, net, warnings = import_caffe(tmp_path / "d.prototxt", tmp_path / "d.net")
    want = check(parse_text("""
        network deploy
        input   maps=3 size=12x10
        conv    c: maps=4 kernel=3x1 stride=2 pad=1x0 activation=sigmoid init=he
        avgpool g: window=6x5 stride=1
        dropout d: rate=0.3
        dense   fc: units=6 activation=tanh lr_mult=0.5 decay_mult=0
        output  out: classes=3 init=uniform range=0.1
    """, "w.net"))
    assert _layers(net) == _layers(want) and not warnings
    for lay, expected in zip(net.trainable, want.trainable, strict=True):
        assert (lay.lr_mult, lay.decay_mult) == (expected.lr_mult, expected.decay_mult)


def test_transform_param_scale_and_mean_value(tmp_path) -> None:
    """Caffe's (raw - mean_value) x scale on bytes is chaosgen's (x - mean) / std x scale on
    x = bytes / 255: mean = mean_value / 255, scale = scale x 255."""
    (tmp_path / "t.prototxt").write_text(
        'layer { name: "d" type: "Data" top: "data" transform_param { scale: 0.017 '
        "mean_value: 104 mean_value: 117 mean_value: 123 } }\n"
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        "inner_product_param { num_output: 2 } }\n")
    _, net, _ = import_caffe(tmp_path / "t.prototxt", tmp_path / "t.net", input_shape="3x2x2")
    raw = np.array([[[0, 255], [104, 7]], [[117, 1], [2, 3]], [[123, 9], [8, 200]]], np.float64)
    mean = np.array([104, 117, 123], np.float64)[:, None, None]
    caffe = (raw - mean) * 0.017
    norm = net.norm
    ours = (raw / 255 - np.array(norm.mean)[:, None, None]) / np.array(norm.std) * norm.scale
    np.testing.assert_allclose(ours, caffe, rtol=1e-12, atol=1e-12)
