"""Weight initialisation (`init=`): each law against PyTorch's torch.nn.init on a tensor of the
same shape (mean, variance, kurtosis, bounds, within tolerances from the sample size), biases,
seeding, the per-layer override, and `default` bit-identical to the code before init= existed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT, SHIPPED

from chaosgen import ir
from chaosgen.check import check
from chaosgen.loader import _unflatten, initial_params
from chaosgen.parse import parse_text
from chaosgen.pipeline import front_end

torch = pytest.importorskip("torch")

# A conv layer (12,800 weights) and a large dense layer (800,000 weights).
SPEC = """input maps=16 size=20x20
conv c1: maps=32 kernel=5x5 {conv}
dense f1: units=500 {dense}
output out: classes=10
train seed=5 {train}
"""


def _net(conv: str = "", dense: str = "", train: str = "") -> ir.Net:
    return check(parse_text(SPEC.format(conv=conv, dense=dense, train=train), "init.net"))


def _weights(net: ir.Net, seed: int = 5) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in _unflatten(net, initial_params(net, seed)).items()}


def _torch_sample(law: str, shape: tuple[int, ...], param: float = 0.0) -> np.ndarray:
    """PyTorch's own init of a tensor of `shape` (float64), seeded."""
    torch.manual_seed(0)
    t = torch.empty(shape, dtype=torch.float64)
    init = torch.nn.init
    if law == "default":  # what nn.Conv2d / nn.Linear do in reset_parameters
        init.kaiming_uniform_(t, a=5**0.5)
    elif law == "xavier":
        init.xavier_uniform_(t)
    elif law == "he":
        init.kaiming_normal_(t, mode="fan_in", nonlinearity="relu")
    elif law == "gaussian":
        init.normal_(t, 0.0, param)
    else:
        init.uniform_(t, -param, param)
    return t.numpy().ravel()


def _assert_same_law(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    """Means, variances and kurtoses agree within 6 standard errors of their difference (from the
    samples' own fourth moments), and the extremes agree (bounded laws end at the same bound)."""
    a, b = ours.ravel(), theirs.ravel()
    var_a, var_b = a.var(), b.var()
    se_mean = np.sqrt(var_a / a.size + var_b / b.size)
    assert abs(a.mean() - b.mean()) <= 6 * se_mean, (what, a.mean(), b.mean())
    m4_a, m4_b = np.mean((a - a.mean()) ** 4), np.mean((b - b.mean()) ** 4)
    se_var = np.sqrt((m4_a - var_a**2) / a.size + (m4_b - var_b**2) / b.size)
    assert abs(var_a - var_b) <= 6 * se_var, (what, var_a, var_b, se_var)
    kurt_a, kurt_b = m4_a / var_a**2, m4_b / var_b**2  # 1.8 uniform, 3 normal
    assert abs(kurt_a - kurt_b) <= 0.15, (what, kurt_a, kurt_b)
    if kurt_b < 2:  # bounded (uniform): the same end points, to within a sampling gap
        gap = 20 * np.sqrt(12 * var_b) / min(a.size, b.size)
        assert abs(np.abs(a).max() - np.abs(b).max()) <= gap, (what, np.abs(a).max())
        assert np.abs(a).max() <= np.abs(b).max() * (1 + 1e-6) + gap


LAWS = [
    ("default", "", 0.0),
    ("xavier", "", 0.0),
    ("he", "", 0.0),
    ("gaussian", "std=0.05", 0.05),
    ("uniform", "range=0.2", 0.2),
]


@pytest.mark.parametrize("law, arg, param", LAWS)
def test_each_law_matches_torch_init(law: str, arg: str, param: float) -> None:
    """On the train statement: every layer's weights follow torch.nn.init's law for its shape;
    biases are zero except with `default` (then nn.Linear's bias law, U(+-1/sqrt(fan_in)))."""
    net = _net(train=f"init={law} {arg}")
    w = _weights(net)
    for lay in net.trainable:
        _assert_same_law(
            w[f"{lay.name}.weight"],
            _torch_sample(law, lay.weight_shape, param),
            f"{law} {lay.name}",
        )
        bias = w[f"{lay.name}.bias"]
        if law == "default":
            torch.manual_seed(1)
            layer = (
                torch.nn.Linear(lay.in_shape.size, lay.out_shape.maps)
                if lay.kind != "conv"
                else torch.nn.Conv2d(lay.in_shape.maps, lay.out_shape.maps, lay.kh)
            )
            bound = float(layer.bias.detach().abs().max())  # a sample's extreme: below the bound
            assert np.abs(bias).max() <= bound * 1.5 and np.abs(bias).max() > 0
        else:
            assert not bias.any(), (law, lay.name)


def test_the_xavier_here_is_glorot_not_caffes_fan_in_filler() -> None:
    """Caffe's default xavier filler, U(+-sqrt(3 / fan_in)), has another variance for a layer
    whose fan_in and fan_out differ: the test above could tell them apart."""
    net = _net(train="init=xavier")
    w = _weights(net)["f1.weight"]
    caffe_var = (3 / net.trainable[1].in_shape.size) / 3  # U(+-a) has variance a^2 / 3
    assert abs(w.var() - caffe_var) > 0.2 * caffe_var


def test_layer_init_overrides_the_train_statement() -> None:
    net = _net(conv="init=he", dense="init=gaussian std=0.01", train="init=uniform range=0.3")
    assert [(t.init, t.init_scale) for t in net.trainable] == [
        ("he", 0.0),
        ("gaussian", 0.01),
        ("uniform", 0.3),
    ]
    w = _weights(net)
    _assert_same_law(w["c1.weight"], _torch_sample("he", (32, 16, 5, 5)), "he c1")
    _assert_same_law(w["f1.weight"], _torch_sample("gaussian", (500, 1792), 0.01), "gaussian f1")
    # a layer's std= alone takes the train statement's gaussian
    net = _net(dense="std=0.02", train="init=gaussian std=0.5")
    assert [(t.init, t.init_scale) for t in net.trainable] == [
        ("gaussian", 0.5),
        ("gaussian", 0.02),
        ("gaussian", 0.5),
    ]
    assert _weights(net)["f1.weight"].std() == pytest.approx(0.02, rel=0.01)


def test_init_is_seeded_and_not_part_of_the_code() -> None:
    net = _net(train="init=he")
    a, b, c = initial_params(net, 5), initial_params(net, 5), initial_params(net, 6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert net.digest() == _net().digest()  # no rebuild for another init


def _before_init(net: ir.Net, seed: int) -> np.ndarray:
    """initial_params as it was before init= (commit 3c2f01b), kept to pin `default`."""
    rng = np.random.default_rng(seed)
    params = np.zeros(net.n_params, np.float32)
    for lay in net.trainable:
        bound = 1.0 / np.sqrt(lay.n_weights // lay.out_shape.maps)
        params[lay.w_offset : lay.w_offset + lay.n_weights] = rng.uniform(
            -bound, bound, lay.n_weights
        )
        params[lay.b_offset : lay.b_offset + lay.n_bias] = rng.uniform(-bound, bound, lay.n_bias)
    return params


@pytest.mark.parametrize("name", SHIPPED)
def test_default_is_bit_identical_to_before(name: str, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    _, net = front_end(f"specs/{name}.net")
    for seed in (1, 12345):
        assert np.array_equal(initial_params(net, seed), _before_init(net, seed))
