"""The update rule and the schedule (issue 11): momentum, Nesterov, weight decay with Caffe's
per-layer multipliers and the lr policies follow torch.optim.SGD (+ a LambdaLR with Caffe's
formula) step for step in float64, per image on one thread and for the averaged scheme's
mini-batches; the train statement's attributes are range-checked with located errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import DATA  # MNIST as the README's test command finds it
from reference import scaled_error

import chaosgen
from chaosgen.check import check
from chaosgen.errors import SpecError
from chaosgen.ir import Dense
from chaosgen.parse import parse_text
from chaosgen.train import Config, Runtime

NET = """input size=29x29
conv c1: maps=6 kernel=4 activation=tanh lr_mult=1 bias_lr_mult=2
maxpool window=2
dense d1: units=16 activation=relu decay_mult=0.5 bias_decay_mult=0
output out: classes=10 lr_mult=0.5
"""
N_IMAGES, CHUNK = 500, 125  # images per trajectory; the native runs go in chunks (iter0)
TOL = 1e-4

# (train attributes, chaosgen Config fields): each lr policy, with momentum/Nesterov/decay
CASES = {
    "momentum_fixed": dict(momentum=0.9, weight_decay=0.0005, lr_policy="fixed"),
    "nesterov_inv": dict(momentum=0.9, nesterov=True, weight_decay=0.0005, lr_policy="inv",
                         gamma=0.01, power=0.75),
    "momentum_step": dict(momentum=0.8, weight_decay=0.001, lr_policy="step", gamma=0.5,
                          step_size=100),
    "momentum_cosine": dict(momentum=0.9, lr_policy="cosine"),
    "decay_only_exp": dict(weight_decay=0.004, lr_policy="exp"),
}


def _caffe_factor(rule: dict, max_iter: int):
    """eta(iter) / eta, written from Caffe's SGDSolver::GetLearningRate (and PyTorch's
    CosineAnnealingLR closed form), independently of chaosgen.update."""
    p = rule.get("lr_policy", "fixed")
    if p == "step":
        return lambda t: rule["gamma"] ** (t // rule["step_size"])
    if p == "inv":
        return lambda t: (1 + rule["gamma"] * t) ** -rule["power"]
    if p == "cosine":
        return lambda t: 0.5 * (1 + math.cos(math.pi * t / max_iter))
    return lambda t: 1.0


@pytest.fixture(scope="module")
def mnist():
    from chaosgen.data import find_data_dir, load_mnist

    try:
        d = load_mnist(find_data_dir(DATA))
    except Exception as e:  # noqa: BLE001 - any missing data skips
        pytest.skip(f"no MNIST: {e}")
    return d.train_images[:N_IMAGES], d.train_labels[:N_IMAGES].astype(np.int64)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    path = tmp_path_factory.mktemp("update") / "u.net"
    path.write_text(NET)
    return chaosgen.compile(path, build_dir=path.parent / "build")


_ACTS = {"tanh": "tanh", "relu": "relu", "sigmoid": "sigmoid", "linear": None}


def _torch_loss(net, p: dict, x, y):
    """The summed cross-entropy of images x (N, maps, h, w) with labels y through `net`, in
    PyTorch (conv, max/avg pool, dense, softmax output: what NET uses)."""
    import torch
    import torch.nn.functional as F

    for lay in net.layers:
        if lay.kind == "conv":
            x = F.conv2d(x, p[f"{lay.name}.weight"], p[f"{lay.name}.bias"], stride=lay.stride)
        elif lay.kind in ("maxpool", "avgpool"):
            pool = F.max_pool2d if lay.kind == "maxpool" else F.avg_pool2d
            x = pool(x, kernel_size=(lay.wh, lay.ww))
            continue
        else:
            x = F.linear(x.reshape(len(x), -1), p[f"{lay.name}.weight"], p[f"{lay.name}.bias"])
        if lay.kind != "output" and _ACTS[lay.activation]:
            x = getattr(torch, _ACTS[lay.activation])(x)
    assert net.output.activation == "softmax" and net.output.loss == "cross_entropy"
    return F.cross_entropy(x, y, reduction="sum")


def _torch_trajectory(net, w0, images, labels, rule, eta, batch, checkpoints):
    """torch.optim.SGD in float64 on mini-batches of `batch` images (mean loss), one parameter
    group per weight or bias with lr x lr_mult and weight_decay x decay_mult, and a LambdaLR;
    returns the weights after each count of images in `checkpoints`."""
    import torch

    torch.set_num_threads(1)
    params = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True)
              for k, v in w0.items()}
    groups = []
    for lay in net.trainable:
        for part, lr_m, wd_m in (("weight", lay.lr_mult, lay.decay_mult),
                                 ("bias", lay.bias_lr_mult, lay.bias_decay_mult)):
            groups.append(dict(params=[params[f"{lay.name}.{part}"]], lr=eta * lr_m,
                               weight_decay=rule.get("weight_decay", 0.0) * wd_m))
    opt = torch.optim.SGD(groups, lr=eta, momentum=rule.get("momentum", 0.0),
                          nesterov=rule.get("nesterov", False), dampening=0)
    steps = -(-len(labels) // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _caffe_factor(rule, steps))
    s_in = net.input
    xs = torch.tensor(np.asarray(images, np.float64)).reshape(-1, s_in.maps, s_in.h, s_in.w)
    ys = torch.tensor(np.asarray(labels, np.int64))
    out = {}
    for s in range(steps):
        opt.zero_grad()
        x, y = xs[s * batch:(s + 1) * batch], ys[s * batch:(s + 1) * batch]
        (_torch_loss(net, params, x, y) / len(y)).backward()  # the mean gradient
        opt.step()
        sched.step()
        if (s + 1) * batch in checkpoints:
            out[(s + 1) * batch] = {k: v.detach().numpy().copy() for k, v in params.items()}
    return out


def _native_trajectory(loaded, images, labels, cfg, eta, chunk, per_step, dense_update="auto"):
    """chaosgen's weights after each chunk of images (one cg_train call each, iter0 carried)."""
    rt = Runtime(loaded)
    x, y = rt.images(images), np.ascontiguousarray(labels, np.int32)
    n, out = len(labels), {}
    total = -(-n // per_step)
    dense = sum(1 << k for k, lay in enumerate(loaded.ir.trainable) if isinstance(lay, Dense))
    for c0 in range(0, n, chunk):
        order = np.arange(c0, min(c0 + chunk, n), dtype=np.int32)
        st = rt.train(x, y, order, cfg, eta, iter0=c0 // per_step, max_iter=total,
                      dense_update=dense_update)
        assert st.images == len(order)
        assert st.owner_blocks == (dense if dense_update == "owner" else 0)
        out[c0 + len(order)] = loaded.get_weights()
    return out


def _compare(got: dict, ref: dict, what: str) -> float:
    worst = 0.0
    for n_img, w in ref.items():
        for k, v in w.items():
            err = scaled_error(got[n_img][k], v)
            assert err <= TOL, f"{what}: {k} after {n_img} images: error {err:.2e}"
            worst = max(worst, err)
    return worst


@pytest.mark.parametrize("case", list(CASES))
def test_per_image_trajectory_follows_torch_sgd(case, loaded, mnist) -> None:
    """500 images of sequential per-image training with the case's rule match torch.optim.SGD
    (batch 1) + LambdaLR(Caffe's formula) in float64, after every 125 images."""
    pytest.importorskip("torch")
    images, labels = mnist
    rule, eta = CASES[case], 0.003
    loaded.init_weights(3)
    w0 = loaded.get_weights()
    cfg = Config(scheme="sequential", threads=1, **rule)
    got = _native_trajectory(loaded, images, labels, cfg, eta, CHUNK, 1)
    ref = _torch_trajectory(loaded.ir, w0, images, labels, rule, eta, 1, set(got))
    worst = _compare(got, ref, case)
    moved = max(scaled_error(got[N_IMAGES][k], w0[k]) for k in w0)
    assert moved > 100 * TOL, f"{case}: the weights barely moved ({moved:.1e}): a weak test"
    print(f"{case}: worst scaled error {worst:.2e}")


# the owner-applied dense update (templates/owner.hpp) forced on one thread, where its order is
# the sequential one: with momentum, Nesterov, decay, and with the multipliers alone (the path
# that skips rows whose deltas are all zero)
OWNER_CASES = {**{k: CASES[k] for k in ("nesterov_inv", "momentum_step", "decay_only_exp")},
               "multipliers_only": dict(lr_policy="fixed")}


@pytest.mark.parametrize("case", list(OWNER_CASES))
def test_owner_applied_update_follows_torch_sgd(case, loaded, mnist) -> None:
    """The dense layers' owner-applied update (records published, then applied by the owner of
    their rows), forced on one thread: 500 images follow torch.optim.SGD per image in float64
    as the locked update does, and every dense block was owner-applied."""
    pytest.importorskip("torch")
    images, labels = mnist
    rule, eta = OWNER_CASES[case], 0.003
    loaded.init_weights(7)
    w0 = loaded.get_weights()
    cfg = Config(scheme="chaos", threads=1, **rule)
    got = _native_trajectory(loaded, images, labels, cfg, eta, CHUNK, 1, "owner")
    ref = _torch_trajectory(loaded.ir, w0, images, labels, rule, eta, 1, set(got))
    print(f"owner {case}: worst scaled error {_compare(got, ref, case):.2e}")
    moved = max(scaled_error(got[N_IMAGES][k], w0[k]) for k in w0 if k.startswith("d1."))
    assert moved > 100 * TOL, f"{case}: d1 barely moved ({moved:.1e}): a weak test"


@pytest.mark.parametrize("case", ["momentum_fixed", "nesterov_inv"])
def test_averaged_batch_follows_torch_minibatch_sgd(case, loaded, mnist) -> None:
    """The averaged scheme with batch 64 (512 images: 8 steps, on two threads) matches PyTorch
    mini-batch SGD with the mean gradient and lr = 64 x eta (the linear-scaling mapping), the
    same momentum and weight decay, inv's iter counted in steps."""
    pytest.importorskip("torch")
    images, labels = mnist
    images, labels = images[:512], labels[:512]
    rule, eta, batch = CASES[case], 0.0005, 64
    loaded.init_weights(4)
    w0 = loaded.get_weights()
    cfg = Config(scheme="averaged", threads=2, batch=batch, **rule)
    got = _native_trajectory(loaded, images, labels, cfg, eta, 256, batch)
    ref = _torch_trajectory(loaded.ir, w0, images, labels, rule, eta * batch, batch, set(got))
    worst = _compare(got, ref, case)
    print(f"averaged {case}: worst scaled error {worst:.2e}")


def test_train_attributes_reach_the_ir() -> None:
    """Every attribute of the update rule lands in ir.Training or on the layers."""
    net = check(parse_text(NET + "train eta=0.01 momentum=0.9 nesterov=true weight_decay=0.0005"
                           " lr_policy=inv gamma=0.0001 power=0.75 batch=64\n", "t.net"))
    t = net.training
    assert (t.momentum, t.nesterov, t.weight_decay, t.lr_policy, t.gamma, t.power, t.batch) == (
        0.9, True, 0.0005, "inv", 0.0001, 0.75, 64)
    assert (net.layers[0].bias_lr_mult, net.layers[2].decay_mult) == (2.0, 0.5)
    d = net.describe()
    assert d["layers"][3]["lr_mult"] == 0.5 and d["training"]["lr_policy"] == "inv"
    exp = check(parse_text(NET + "train lr_policy=exp gamma=0.5\n", "t.net")).training
    assert exp.decay == 0.5  # exp's gamma is today's decay


# The published recipes as each spec transcribes them (the spec's comments say how the mini-batch
# solver maps to per-image steps): what the trainer must be handed, written from the sources.
# name -> (spec, Config fields, per layer (init, its std or range, lr_mult, decay_mult,
# bias_lr_mult, bias_decay_mult), (mean, std, scale), eta after n of the run's total images)
CAFFE_LAYER = (1.0, 1.0, 2.0, 1.0)  # Caffe's param { lr_mult: 1 } param { lr_mult: 2 }
TORCH_LAYER = (1.0, 1.0, 1.0, 1.0)
RECIPES = {
    # lenet_solver.prototxt: base_lr 0.01, momentum 0.9, weight_decay 0.0005, inv 0.0001 / 0.75,
    # batch 64; the spec steps per image at eta 0.001, its inv counted in images
    "lenet": (
        "specs/lenet.net",
        dict(epochs=10, eta=0.001, momentum=0.9, nesterov=False, weight_decay=0.0005,
             lr_policy="inv", gamma=0.0001, power=0.75, batch=64, seed=1),
        [("xavier", 0.0, *CAFFE_LAYER)] * 4,
        ((0.0,), (1.0,), 255 / 256),  # scale 0.00390625 on bytes
        lambda n, total: 0.001 * (1 + 0.0001 * n) ** -0.75,
    ),
    # cifar10_quick_solver(_lr1).prototxt: base_lr 0.001 for 4,000 iterations of 100, then
    # 0.0001 for 1,000; momentum 0.9, weight_decay 0.004; per image eta = base_lr / 100
    "cifar10_quick": (
        "specs/cifar10_quick.net",
        dict(epochs=10, eta=0.00001, momentum=0.9, nesterov=False, weight_decay=0.004,
             lr_policy="step", gamma=0.1, step_size=400_000, batch=100, seed=1),
        [("gaussian", std, *CAFFE_LAYER) for std in (0.0001, 0.01, 0.01, 0.1, 0.1)],
        ((0.4914, 0.4822, 0.4465), (1.0,), 255.0),  # bytes minus the mean, unscaled
        lambda n, total: (0.001 if n // 100 < 4000 else 0.0001) / 100,
    ),
    # PyTorch's mnist/main.py: Normalize((0.1307,), (0.3081,)), batch 64, 14 epochs; SGD with
    # momentum in place of Adadelta, CosineAnnealingLR over the run for its StepLR (the spec
    # says why)
    "mnist_pytorch": (
        "specs/mnist_pytorch.net",
        dict(epochs=14, eta=0.0005, momentum=0.9, nesterov=False, weight_decay=0.0,
             lr_policy="cosine", batch=64, seed=1),
        [("default", 0.0, *TORCH_LAYER)] * 4,
        ((0.1307,), (0.3081,), 1.0),
        lambda n, total: 0.0005 * 0.5 * (1 + math.cos(math.pi * n / total)),
    ),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_published_recipes_reach_the_trainer(name: str, in_repo) -> None:
    """`chaosgen train SPEC` hands the trainer the published recipe: the Config the command
    builds (eta, momentum, weight decay, policy and its parameters, batch, epochs, seed), the
    per-layer multipliers the runtime passes to the native update, each layer's filler, the
    input's normalisation, and the effective eta over the run (Caffe's iterations of a batch)."""
    from chaosgen import update
    from chaosgen.cli import build_parser
    from chaosgen.pipeline import front_end
    from chaosgen.train import train_config

    spec, fields, layers, norm, eta_of = RECIPES[name]
    _, net = front_end(spec)
    args = build_parser().parse_args(["train", spec])
    cfg, changed = train_config(args, 2, net.training, None)
    assert changed == {} and cfg.scheme == "chaos"
    assert {k: getattr(cfg, k) for k in fields} == fields
    mults = update.multipliers(net)
    rows = [(t.init, t.init_scale) for t in net.trainable]
    assert rows == [lay[:2] for lay in layers]
    want = np.array([lay[2:] for lay in layers], np.float32)
    if (want == 1).all():
        assert mults is None  # the paper's update: no multiplier array
    else:
        np.testing.assert_array_equal(mults, want)
    assert (net.norm.mean, net.norm.std, net.norm.scale) == norm
    total = cfg.epochs * (50_000 if name == "cifar10_quick" else 60_000)  # training images
    for n in (0, 1, 63, 64, 6400, 399_999, 400_000, 499_999, total - 1):
        got = update.eta_at(cfg.lr_policy, cfg.eta, n, cfg.gamma, cfg.power, cfg.step_size, total)
        assert got == pytest.approx(eta_of(n, total), rel=1e-12, abs=1e-18), n


@pytest.mark.parametrize(
    "line, where, message",
    [
        ("train momentum=1", "6:16", "'momentum' must be in [0, 1), found 1"),
        ("train nesterov=true", "6:16", "nesterov=true needs momentum > 0"),
        ("train nesterov=yes momentum=0.5", "6:16", "'nesterov' must be true or false"),
        ("train weight_decay=-0.1", "6:20", "'weight_decay' must be in [0, 1]"),
        ("train lr_policy=poly", "6:17", "unknown lr_policy 'poly'"),
        ("train lr_policy=inv gamma=0.1", "6:1", "lr_policy inv needs 'power'"),
        ("train lr_policy=step gamma=0.5 step_size=0", "6:42", "'step_size' must be a positive"),
        ("train lr_policy=step gamma=1.5 step_size=10", "6:28", "'gamma' of lr_policy step"),
        ("train lr_policy=cosine decay=0.9", "6:30", "'decay' is lr_policy exp's factor"),
        ("train lr_policy=fixed power=2", "6:29", "lr_policy fixed takes no 'power'"),
        ("train gamma=0.5 decay=0.5", "6:13", "'gamma' and 'decay' both give exp's factor"),
        ("train batch=0", "6:13", "'batch' must be between 1 and"),
        ("dense d2: units=3 lr_mult=-1", "6:27", "'lr_mult' must be in [0, 1000], found -1"),
    ],
)
def test_bad_update_attributes_are_located(line: str, where: str, message: str) -> None:
    """Each bad value is one located error naming the attribute and the range."""
    text = NET + line + "\n"
    if line.startswith("dense"):  # a layer after the output is a second error: put it before
        lines = NET.splitlines()
        text = "\n".join(lines[:4] + [line] + lines[4:]) + "\n"
        where = "5" + where[1:]
    with pytest.raises(SpecError) as e:
        check(parse_text(text, "t.net"))
    first = str(e.value).splitlines()[0]
    assert first.startswith(f"t.net:{where}: error: ") and message in first, first


def _cli(tmp_path, spec, run: str, *extra: str) -> int:
    from chaosgen.cli import main

    return main(["train", str(spec), "--data", DATA, "--scheme", "sequential", "--limit", "300",
                 "--val-limit",
                 "100", "--test-limit", "100", "--quiet", "--checkpoint-dir",
                 str(tmp_path / run), "--log", str(tmp_path / f"{run}.jsonl"),
                 "--build-dir", str(tmp_path / "build"), *extra])


def test_resume_continues_momentum_and_schedule_exactly(tmp_path, mnist) -> None:
    """Two epochs in one run, and one epoch then --resume for the second, end bitwise equal
    (the velocity is checkpointed, inv's iter continues); the log gives each epoch's eta at its
    first and last image, from Caffe's inv formula over images."""
    import json

    from chaosgen import checkpoint

    spec = tmp_path / "m.net"
    spec.write_text(NET + "train epochs=2 eta=0.003 momentum=0.9 weight_decay=0.0005 "
                    "lr_policy=inv gamma=0.001 power=0.75\n")
    assert _cli(tmp_path, spec, "whole") == 0
    assert _cli(tmp_path, spec, "parts", "--epochs", "1") == 0
    assert _cli(tmp_path, spec, "parts", "--resume", "--epochs", "2") == 0
    a = checkpoint.load(tmp_path / "whole" / "last.npz")
    b = checkpoint.load(tmp_path / "parts" / "last.npz")
    assert a.epoch == b.epoch == 2 and a.velocity is not None and np.abs(a.velocity).max() > 0
    assert np.array_equal(a.params, b.params) and np.array_equal(a.velocity, b.velocity)
    recs = [json.loads(s) for s in (tmp_path / "parts.jsonl").read_text().splitlines()]
    inv = [0.003 * (1 + 0.001 * t) ** -0.75 for t in (0, 299, 300, 599)]
    got = [recs[0]["eta"], recs[0]["eta_end"], recs[1]["eta"], recs[1]["eta_end"]]
    assert got == pytest.approx(inv, rel=1e-12)


def test_one_thread_schemes_coincide_and_delayed_is_a_minibatch(loaded, mnist) -> None:
    """On one thread, chaos, hogwild and delayed with k=1 give the sequential weights bit for
    bit with momentum, weight decay and inv; delayed with k=4 is PyTorch mini-batch SGD with
    batch 4 and lr = 4 x eta (the same mapping as averaged)."""
    pytest.importorskip("torch")
    images, labels = mnist[0][:200], mnist[1][:200]
    rule = CASES["nesterov_inv"]
    runs = {}
    for scheme, k in (("sequential", 1), ("chaos", 1), ("hogwild", 1), ("delayed", 1)):
        loaded.init_weights(5)
        cfg = Config(scheme=scheme, threads=1, update_every=k, **rule)
        runs[scheme] = _native_trajectory(loaded, images, labels, cfg, 0.003, 100, 1)[200]
    for scheme, w in runs.items():
        assert all(np.array_equal(w[k], runs["sequential"][k]) for k in w), scheme
    fixed = CASES["momentum_fixed"]
    loaded.init_weights(5)
    w0 = loaded.get_weights()
    cfg = Config(scheme="delayed", threads=1, update_every=4, **fixed)
    got = _native_trajectory(loaded, images, labels, cfg, 0.003, 100, 1)
    ref = _torch_trajectory(loaded.ir, w0, images, labels, fixed, 0.012, 4, set(got))
    print(f"delayed k=4: worst scaled error {_compare(got, ref, 'delayed'):.2e}")


@pytest.mark.parametrize("scheme", ["chaos", "hogwild"])
def test_two_threads_with_momentum_learn_as_one_does(scheme, loaded) -> None:
    """CHAOS (velocity under the segment locks) and hogwild on two threads with momentum and
    weight decay reach the error of the sequential run within a few points (no exact trajectory
    exists: the interleaving of the workers' updates is not reproducible)."""
    from chaosgen.data import find_data_dir, load_mnist

    try:
        d = load_mnist(find_data_dir(DATA))
    except Exception as e:  # noqa: BLE001 - any missing data skips
        pytest.skip(f"no MNIST: {e}")
    rt = Runtime(loaded)
    x, y = rt.images(d.train_images[:4000]), np.ascontiguousarray(d.train_labels[:4000], np.int32)
    order = np.arange(3000, dtype=np.int32)
    loss, rates = {}, {}
    for sch, threads in (("sequential", 1), (scheme, 2)):
        loaded.init_weights(6)
        rt.velocity = None
        cfg = Config(scheme=sch, threads=threads, **CASES["momentum_fixed"])
        st = rt.train(x, y, order, cfg, 0.003)
        loss[sch] = st.loss / st.images
        rates[sch] = rt.evaluate(x[3000:], y[3000:], 1).error_rate
    # 40 runs of each: the epoch's mean loss 0.77-0.89 (sequential 0.79), the error after it
    # 9-15% (sequential 11%): the bounds leave room for that spread, not for a broken update
    assert loss[scheme] < 1.25 * loss["sequential"], loss
    assert rates["sequential"] < 0.2 and rates[scheme] < 0.2, rates
