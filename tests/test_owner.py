"""The owner-applied update of dense layers on two threads (templates/owner.hpp): every image's
record reaches every row exactly once, with its own eta, in one order for all rows. The order
depends on the interleaving, so the runtime's trace gives it (with each record's x, dz and eta),
and a NumPy float64 replay of torch.optim.SGD's step over the traced records, in that order,
must give the weights and velocity the workers left. (The one-thread trajectory against PyTorch
itself is in test_update.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA
from reference import scaled_error

import chaosgen
from chaosgen.ir import Dense
from chaosgen.train import Config, Runtime, trace_floats

# A dense first layer: its records' x are the images themselves, checked against them.
NET = """input size=28x28
dense d1: units=32 activation=relu decay_mult=0.5 bias_lr_mult=2 bias_decay_mult=0
dense d2: units=24 activation=tanh lr_mult=0.5
output out: classes=10
"""
N_IMAGES = 2000
TOL = 1e-4  # float32 over 2000 steps against float64 (observed: about 1e-6)

CASES = {
    "nesterov_inv": dict(momentum=0.9, nesterov=True, weight_decay=0.0005, lr_policy="inv",
                         gamma=0.001, power=0.75),
    "momentum_decay": dict(momentum=0.9, weight_decay=0.001, lr_policy="fixed"),
    "multipliers_only": dict(lr_policy="fixed"),  # no velocity: zero rows skipped
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from chaosgen.data import find_data_dir, load_mnist

    try:
        d = load_mnist(find_data_dir(DATA))
    except Exception as e:  # noqa: BLE001 - any missing data skips
        pytest.skip(f"no MNIST: {e}")
    path = tmp_path_factory.mktemp("owner") / "o.net"
    path.write_text(NET)
    net = chaosgen.compile(path, build_dir=path.parent / "build")
    rt = Runtime(net)
    # MNIST is 28x28 here (the paper's 29x29 has a zero row and column: crop them)
    x = rt.images(d.train_images[:N_IMAGES], "crop")
    return net, rt, x, np.ascontiguousarray(d.train_labels[:N_IMAGES], np.int32)


def _replay(lay: Dense, w0: np.ndarray, b0: np.ndarray, records: np.ndarray, rule: dict):
    """torch.optim.SGD's step (dampening 0, L2 decay, momentum or Nesterov), written from its
    documentation, in float64, once per record (eta, index, x, dz) in the given order, on the
    weights (out, in) and biases of `lay` with its multipliers. Returns weights, biases and
    their velocities."""
    mu, nesterov, wd = rule.get("momentum", 0.0), rule.get("nesterov", False), rule.get(
        "weight_decay", 0.0)
    n_in, n_out = lay.in_shape.size, lay.out_shape.maps
    state = [[w0.astype(np.float64), np.zeros(w0.shape), lay.lr_mult, wd * lay.decay_mult],
             [b0.astype(np.float64), np.zeros(b0.shape), lay.bias_lr_mult,
              wd * lay.bias_decay_mult]]
    for rec in records:
        eta, x, dz = rec[0], rec[2:2 + n_in], rec[2 + n_in:2 + n_in + n_out]
        for part, grad in zip(state, (np.outer(dz, x), dz)):
            p, v, lr_mult, decay = part
            g = grad + decay * p
            if mu:
                v[:] = mu * v + g
                g = g + mu * v if nesterov else v
            p -= eta * lr_mult * g
    return state[0][0], state[1][0], state[0][1], state[1][1]


@pytest.mark.parametrize("case", list(CASES))
def test_two_threads_apply_every_record_once_in_one_order(case, setup) -> None:
    """2000 images on two threads, every dense layer owner-applied, traced: each image has one
    record per layer, with the eta of its position (the lr policy) and, for the first layer, the
    image as x; replaying the records in the traced order gives every layer's weights, biases
    and velocity to float32 rounding."""
    net, rt, x, y = setup
    rule, eta0 = CASES[case], 0.003
    net.init_weights(11)
    rt.velocity = None
    w0 = net.get_weights()
    order = np.random.default_rng(1).permutation(N_IMAGES).astype(np.int32)
    trace = np.full(N_IMAGES * trace_floats(net.ir), np.nan)
    cfg = Config(scheme="chaos", threads=2, **rule)
    st = rt.train(x, y, order, cfg, eta0, dense_update="owner", trace=trace)
    if st.threads < 2:
        pytest.skip("OpenMP ran one thread")
    dense = [lay for lay in net.ir.trainable if isinstance(lay, Dense)]
    assert st.owner_blocks == (1 << len(dense)) - 1 and st.images == N_IMAGES
    got = net.get_weights()
    position = np.argsort(order)  # image index -> its position in the epoch
    start, worst = 0, 0.0
    for lay in dense:
        size = 2 + lay.in_shape.size + lay.out_shape.maps
        records = trace[start:start + N_IMAGES * size].reshape(N_IMAGES, size)
        start += N_IMAGES * size
        index = records[:, 1].astype(np.int64)
        assert np.array_equal(np.sort(index), np.arange(N_IMAGES)), f"{lay.name}: not each once"
        expected_eta = eta0 * (
            (1 + rule["gamma"] * position[index]) ** -rule["power"]
            if rule["lr_policy"] == "inv" else np.ones(N_IMAGES))
        np.testing.assert_allclose(records[:, 0], expected_eta, rtol=1e-6, err_msg=lay.name)
        if lay.name == "d1":
            assert np.array_equal(records[:, 2:2 + lay.in_shape.size],
                                  x[index, :lay.in_shape.size]), "d1's x is not the image"
        w, b, vw, vb = _replay(lay, w0[f"{lay.name}.weight"], w0[f"{lay.name}.bias"], records, rule)
        pairs = [(got[f"{lay.name}.weight"], w, "weight"), (got[f"{lay.name}.bias"], b, "bias")]
        if rule.get("momentum"):
            v = rt.velocity
            pairs += [(v[lay.w_offset:lay.w_offset + w.size].reshape(w.shape), vw, "velocity"),
                      (v[lay.b_offset:lay.b_offset + b.size], vb, "bias velocity")]
        for have, want, what in pairs:
            err = scaled_error(have, want)
            assert err <= TOL, f"{case}: {lay.name} {what}: scaled error {err:.2e}"
            worst = max(worst, err)
        moved = scaled_error(got[f"{lay.name}.weight"], w0[f"{lay.name}.weight"])
        assert moved > 100 * TOL, f"{lay.name} barely moved ({moved:.1e}): a weak test"
    print(f"{case}: worst scaled error {worst:.2e}")


def test_batched_schemes_and_locked_leave_the_dense_update_locked(setup) -> None:
    """Delayed with k > 1 and averaged apply summed gradients (no records); dense_update
    'locked' keeps the segment locks."""
    net, rt, x, y = setup
    order = np.arange(256, dtype=np.int32)
    for cfg, mode in ((Config(scheme="delayed", threads=2, update_every=4), "owner"),
                      (Config(scheme="averaged", threads=2, batch=16), "owner"),
                      (Config(scheme="chaos", threads=2), "locked")):
        net.init_weights(3)
        assert rt.train(x, y, order, cfg, 0.003, dense_update=mode).owner_blocks == 0, cfg
