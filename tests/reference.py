"""Independent numerical oracles for compiled networks: plain NumPy in float64, and PyTorch.

Written for the tests from the textbook definitions. They read only the IR's structure (layer
kinds, shapes, kernel and window sizes, strides, activations, loss) and never chaosgen's formulas
or generated code: derivatives are taken with respect to the pre-activation z (chaosgen writes
them in terms of the output y), softmax with MSE goes through the full Jacobian, and the
cross-entropy comes from a log-sum-exp of the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chaosgen import ir

STANH_A, STANH_S = 1.7159, 2.0 / 3.0


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.where(
        z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z)))
    )


# name -> (f(z), f'(z)), both as functions of the pre-activation z.
ACTIVATIONS = {
    "scaled_tanh": (
        lambda z: STANH_A * np.tanh(STANH_S * z),
        lambda z: STANH_A * STANH_S / np.cosh(STANH_S * z) ** 2,
    ),
    "tanh": (np.tanh, lambda z: 1.0 / np.cosh(z) ** 2),
    "sigmoid": (_sigmoid, lambda z: _sigmoid(z) * _sigmoid(-z)),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(np.float64)),
    "linear": (lambda z: z, np.ones_like),
}


def _windows(n_out: int, k: int, s: int) -> list[slice]:
    """For each kernel offset 0..k-1, the input indices it meets at the n_out output positions."""
    return [slice(off, off + s * (n_out - 1) + 1, s) for off in range(k)]


def _conv_forward(lay: ir.Conv, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    oh, ow = lay.out_shape.h, lay.out_shape.w
    z = np.broadcast_to(b[:, None, None], (lay.out_shape.maps, oh, ow)).copy()
    for ky, rows in enumerate(_windows(oh, lay.kh, lay.stride)):
        for kx, cols in enumerate(_windows(ow, lay.kw, lay.stride)):
            z += np.einsum("oc,cij->oij", w[:, :, ky, kx], x[:, rows, cols])
    return z


def _conv_backward(lay: ir.Conv, x: np.ndarray, w: np.ndarray, dz: np.ndarray):
    oh, ow = lay.out_shape.h, lay.out_shape.w
    dw = np.zeros_like(w)
    dx = np.zeros_like(x)
    for ky, rows in enumerate(_windows(oh, lay.kh, lay.stride)):
        for kx, cols in enumerate(_windows(ow, lay.kw, lay.stride)):
            dw[:, :, ky, kx] = np.einsum("oij,cij->oc", dz, x[:, rows, cols])
            dx[:, rows, cols] += np.einsum("oc,oij->cij", w[:, :, ky, kx], dz)
    return dx, dw, dz.sum(axis=(1, 2))


def _blocks(lay: ir.Pool, x: np.ndarray) -> np.ndarray:
    """(maps, out_h, out_w, wh*ww): the inputs of every window, in row-major window order."""
    c, oh, ow = lay.out_shape.maps, lay.out_shape.h, lay.out_shape.w
    blocks = x.reshape(c, oh, lay.wh, ow, lay.ww).transpose(0, 1, 3, 2, 4)
    return blocks.reshape(c, oh, ow, lay.wh * lay.ww)


def _unblocks(lay: ir.Pool, blocks: np.ndarray) -> np.ndarray:
    c, oh, ow = lay.out_shape.maps, lay.out_shape.h, lay.out_shape.w
    b = blocks.reshape(c, oh, ow, lay.wh, lay.ww).transpose(0, 1, 3, 2, 4)
    return b.reshape(lay.in_shape.maps, lay.in_shape.h, lay.in_shape.w)


def _pad(lay: ir.Conv, x: np.ndarray) -> np.ndarray:
    return np.pad(x, ((0, 0), (lay.pad_h, lay.pad_h), (lay.pad_w, lay.pad_w)))


def _pool_windows(lay: ir.Pool) -> list[tuple[int, int, slice, slice]]:
    """Every window (i, j, rows, cols), clipped to the input, from its stride alone."""
    h, w = lay.in_shape.h, lay.in_shape.w
    return [
        (i, j, slice(i * lay.sh, min(i * lay.sh + lay.wh, h)),
         slice(j * lay.sw, min(j * lay.sw + lay.ww, w)))
        for i in range(lay.out_shape.h)
        for j in range(lay.out_shape.w)
    ]


def _pool_forward(lay: ir.Pool, x: np.ndarray) -> tuple[np.ndarray, list]:
    """Overlapping or clipped windows, one at a time: max (first maximum) or mean over the part
    inside the input; also each window's (rows, cols, argmax) for the backward pass."""
    y = np.zeros((lay.out_shape.maps, lay.out_shape.h, lay.out_shape.w))
    tape = []
    for i, j, rows, cols in _pool_windows(lay):
        part = x[:, rows, cols].reshape(x.shape[0], -1)
        if lay.op == "max":
            pick = part.argmax(axis=1)
            y[:, i, j] = part[np.arange(x.shape[0]), pick]
        else:
            pick = None
            y[:, i, j] = part.mean(axis=1)
        tape.append((i, j, rows, cols, pick))
    return y, tape


def _pool_backward(lay: ir.Pool, tape: list, d: np.ndarray) -> np.ndarray:
    dx = np.zeros((lay.in_shape.maps, lay.in_shape.h, lay.in_shape.w))
    for i, j, rows, cols, pick in tape:
        n_r, n_c = rows.stop - rows.start, cols.stop - cols.start
        if lay.op == "max":
            for c in range(dx.shape[0]):
                dx[c, rows.start + pick[c] // n_c, cols.start + pick[c] % n_c] += d[c, i, j]
        else:
            dx[:, rows, cols] += d[:, i, j][:, None, None] / (n_r * n_c)
    return dx


@dataclass
class Result:
    """What one image gives: the output activations, the loss and d loss / d every parameter."""

    output: np.ndarray
    loss: float
    grads: dict[str, np.ndarray]


def _onehot(n: int, label: int) -> np.ndarray:
    t = np.zeros(n)
    t[label] = 1.0
    return t


def numpy_run(
    net: ir.Net,
    weights: dict[str, np.ndarray],
    image: np.ndarray,
    label: int,
    masks: dict[str, np.ndarray] | None = None,
) -> Result:
    """Forward and backward pass of one image in float64. Dropout layers: identity, or with
    `masks` (layer -> bool keep array) inverted dropout, x * mask / (1 - rate)."""
    p = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    x = np.asarray(image, np.float64).reshape(net.input.maps, net.input.h, net.input.w)
    tape = []  # (layer, input, pre-activation, extra)
    for lay in net.layers:
        if isinstance(lay, ir.Conv):
            z = _conv_forward(lay, _pad(lay, x), p[f"{lay.name}.weight"], p[f"{lay.name}.bias"])
            tape.append((lay, x, z, None))
            x = ACTIVATIONS[lay.activation][0](z)
        elif isinstance(lay, ir.Pool) and not lay.tiles:
            y, windows = _pool_forward(lay, x)
            tape.append((lay, x, None, windows))
            x = y
        elif isinstance(lay, ir.Pool):
            blocks = _blocks(lay, x)
            if lay.op == "max":
                pick = blocks.argmax(axis=-1)  # the first maximum, as in every max-pool
                tape.append((lay, x, None, pick))
                x = np.take_along_axis(blocks, pick[..., None], -1)[..., 0]
            else:
                tape.append((lay, x, None, None))
                x = blocks.mean(axis=-1)
        elif isinstance(lay, ir.Dropout):
            factor = 1.0 if masks is None else masks[lay.name] / (1.0 - lay.rate)
            tape.append((lay, x, None, factor))
            x = x * factor
        elif isinstance(lay, ir.Dense):
            z = p[f"{lay.name}.weight"] @ x.reshape(-1) + p[f"{lay.name}.bias"]
            tape.append((lay, x, z, None))
            if lay.activation == "softmax":
                e = np.exp(z - z.max())
                x = e / e.sum()
            else:
                x = ACTIVATIONS[lay.activation][0](z)
        else:
            raise AssertionError(f"unknown layer {lay}")
        x = x.reshape(lay.out_shape.maps, lay.out_shape.h, lay.out_shape.w)  # dense: (units, 1, 1)
    out_lay: ir.Output = net.output
    y = x.reshape(-1)
    z_out = tape[-1][2]
    t = _onehot(y.size, label)
    if out_lay.loss == "cross_entropy":
        zmax = z_out.max()
        loss = float(zmax + np.log(np.exp(z_out - zmax).sum()) - z_out[label])
        dz = y - t
    else:
        loss = float(0.5 * np.sum((y - t) ** 2))
        dy = y - t
        if out_lay.activation == "softmax":
            jac = np.diag(y) - np.outer(y, y)  # d y_i / d z_j
            dz = jac.T @ dy
        else:
            dz = dy * ACTIVATIONS[out_lay.activation][1](z_out)
    grads: dict[str, np.ndarray] = {}
    delta = None  # d loss / d (output of the layer being visited)
    for lay, x_in, z, extra in reversed(tape):
        if delta is not None and isinstance(lay, ir.Trainable):
            dz = delta.reshape(z.shape) * ACTIVATIONS[lay.activation][1](z)
        if isinstance(lay, ir.Conv):
            dx, dw, db = _conv_backward(lay, _pad(lay, x_in), p[f"{lay.name}.weight"], dz)
            _, h, w = x_in.shape
            dx = dx[:, lay.pad_h : lay.pad_h + h, lay.pad_w : lay.pad_w + w]
            grads[f"{lay.name}.weight"], grads[f"{lay.name}.bias"] = dw, db
        elif isinstance(lay, ir.Dense):
            grads[f"{lay.name}.weight"] = np.outer(dz, x_in.reshape(-1))
            grads[f"{lay.name}.bias"] = dz.copy()
            dx = (p[f"{lay.name}.weight"].T @ dz).reshape(x_in.shape)
        elif isinstance(lay, ir.Dropout):
            dx = delta.reshape(x_in.shape) * extra
        elif not lay.tiles:
            d = delta.reshape(lay.out_shape.maps, lay.out_shape.h, lay.out_shape.w)
            dx = _pool_backward(lay, extra, d)
        else:
            d = delta.reshape(lay.out_shape.maps, lay.out_shape.h, lay.out_shape.w)
            if lay.op == "max":
                hot = np.zeros(d.shape + (lay.wh * lay.ww,))
                np.put_along_axis(hot, extra[..., None], d[..., None], -1)
            else:
                hot = np.repeat(d[..., None] / (lay.wh * lay.ww), lay.wh * lay.ww, axis=-1)
            dx = _unblocks(lay, hot)
        delta = dx
    return Result(output=y, loss=loss, grads={k: grads[k] for k in weights})


def numpy_loss(
    net: ir.Net, weights: dict[str, np.ndarray], image: np.ndarray, label: int
) -> float:
    """The loss alone (for finite differences)."""
    return numpy_run(net, weights, image, label).loss


def finite_differences(
    net: ir.Net,
    weights: dict[str, np.ndarray],
    image: np.ndarray,
    label: int,
    indices: dict[str, np.ndarray],
    h: float = 1e-6,
) -> dict[str, np.ndarray]:
    """Central differences of the float64 loss at given flat indices of each parameter array."""
    w = {k: np.asarray(v, np.float64).copy() for k, v in weights.items()}
    out = {}
    for key, idx in indices.items():
        flat = w[key].reshape(-1)
        vals = []
        for i in idx:
            keep = flat[i]
            flat[i] = keep + h
            up = numpy_loss(net, w, image, label)
            flat[i] = keep - h
            down = numpy_loss(net, w, image, label)
            flat[i] = keep
            vals.append((up - down) / (2 * h))
        out[key] = np.array(vals)
    return out


def torch_run(
    net: ir.Net,
    weights: dict[str, np.ndarray],
    image: np.ndarray,
    label: int,
    masks: dict[str, np.ndarray] | None = None,
) -> Result:
    """The same pass with PyTorch float64 autograd (torch must be importable). Dropout layers:
    identity, or with `masks` (layer -> bool keep array) the inverted-dropout training pass
    x * mask / (1 - rate), as torch.nn.functional.dropout scales its kept units."""
    import torch
    import torch.nn.functional as F

    acts = {
        "scaled_tanh": lambda z: STANH_A * torch.tanh(STANH_S * z),
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "relu": torch.relu,
        "linear": lambda z: z,
    }
    p = {
        k: torch.tensor(np.asarray(v, np.float64), requires_grad=True) for k, v in weights.items()
    }
    x = torch.tensor(np.asarray(image, np.float64)).reshape(1, net.input.maps, *net.input.dims)
    for lay in net.layers:
        volume = lay.in_shape.volume  # 3D: conv3d, max_pool3d, avg_pool3d
        if isinstance(lay, ir.Conv):
            conv = F.conv3d if volume else F.conv2d
            x = conv(
                x,
                p[f"{lay.name}.weight"],
                p[f"{lay.name}.bias"],
                stride=lay.stride,
                padding=lay.pad,
            )
            x = acts[lay.activation](x)
        elif isinstance(lay, ir.Pool):
            if lay.op == "max":
                pool = F.max_pool3d if volume else F.max_pool2d
            else:
                pool = F.avg_pool3d if volume else F.avg_pool2d
            # ceil_mode: PyTorch's last, partial windows; avg_pool2d divides by the part of the
            # window inside the (unpadded) input, count_include_pad or not
            x = pool(
                x,
                kernel_size=lay.window,
                stride=lay.strides,
                ceil_mode=lay.round == "ceil",
            )
        elif isinstance(lay, ir.Dropout):
            if masks is not None:
                keep = torch.tensor(np.asarray(masks[lay.name], np.float64)).reshape(x.shape)
                x = x * keep / (1.0 - lay.rate)
        else:
            z = F.linear(x.reshape(1, -1), p[f"{lay.name}.weight"], p[f"{lay.name}.bias"])
            x = torch.softmax(z, dim=1) if lay.activation == "softmax" else acts[lay.activation](z)
        x = x.reshape(1, lay.out_shape.maps, *lay.out_shape.dims)
    target = torch.tensor([label])
    if net.output.loss == "cross_entropy":
        loss = F.cross_entropy(z, target, reduction="sum")
    else:
        y = x.reshape(1, -1)
        loss = 0.5 * ((y - F.one_hot(target, y.shape[1]).double()) ** 2).sum()
    loss.backward()
    return Result(
        output=x.detach().numpy().reshape(-1),
        loss=float(loss.detach()),
        grads={k: v.grad.numpy() for k, v in p.items()},
    )


# --- comparing float32 results with a float64 reference --------------------------------------
RTOL = 1e-4
FLOOR = 1e-3  # an array's scale is at least this fraction of the largest value of its kind


def _scale(ref: np.ndarray, floor: float) -> float:
    return max(float(np.abs(ref).max(initial=0.0)), floor)


def scaled_error(got: np.ndarray, ref: np.ndarray, floor: float = FLOOR) -> float:
    """max |got - ref| / scale, the scale being max |ref| (at least `floor`)."""
    ref = np.asarray(ref, np.float64)
    err = float(np.max(np.abs(np.asarray(got, np.float64) - ref)))
    return err / _scale(ref, floor) if err else 0.0


def assert_close(
    got: np.ndarray, ref: np.ndarray, what: str, floor: float = FLOOR, rtol: float = RTOL
) -> None:
    """|got - ref| <= rtol * (|ref| + scale) elementwise, scale = max |ref| of the array (at least
    `floor`). float32 sums lose precision relative to their largest terms, not to each result, so
    the absolute part follows the array's magnitude; it is never looser than the usual
    atol = rtol * max(1, max |ref|) and much tighter for small gradients."""
    ref = np.asarray(ref, np.float64)
    assert np.shape(got) == ref.shape, f"{what}: shape {np.shape(got)} != {ref.shape}"
    np.testing.assert_allclose(
        np.asarray(got, np.float64), ref, rtol=rtol, atol=rtol * _scale(ref, floor), err_msg=what
    )


def compare(got: Result, ref: Result, rtol: float = RTOL) -> dict[str, float]:
    """Assert output, loss and every gradient close; return the scaled errors by key. A gradient
    array's scale is at least FLOOR times the largest gradient of the whole network (an array
    that is exactly zero in float64 may hold float32 round-off of the others)."""
    assert got.grads.keys() == ref.grads.keys()
    assert_close(got.output, ref.output, "output", rtol=rtol)
    assert_close(np.array(got.loss), np.array(ref.loss), "loss", rtol=rtol)
    errors = {
        "output": scaled_error(got.output, ref.output),
        "loss": scaled_error(got.loss, ref.loss),
    }
    floor = FLOOR * max(_scale(g, 0.0) for g in ref.grads.values())
    for key, g in ref.grads.items():
        assert_close(got.grads[key], g, f"gradient {key}", floor=floor, rtol=rtol)
        errors[key] = scaled_error(got.grads[key], g, floor)
    return errors


def chaosgen_run(
    loaded, image: np.ndarray, label: int, dropout: tuple[int, int, int] | None = None
) -> Result:
    """The compiled network's forward output (evaluation: dropout is the identity), and the loss
    and gradients of one image, under the training masks of `dropout` = (seed, epoch, index)."""
    out = loaded.forward(image)
    grads = loaded.gradients(image, label, dropout=dropout)
    return Result(output=out, loss=float(loaded.last_loss), grads=grads)


def oracle_run(
    run,
    net: ir.Net,
    weights: dict[str, np.ndarray],
    image: np.ndarray,
    label: int,
    masks: dict[str, np.ndarray] | None = None,
) -> Result:
    """What chaosgen_run gives, from an oracle `run` (numpy_run or torch_run): the evaluation
    output, and the loss and gradients of the training pass under `masks` (None: no dropout)."""
    trained = run(net, weights, image, label, masks)
    if masks is None or not net.dropouts:
        return trained
    evaluated = run(net, weights, image, label)
    return Result(output=evaluated.output, loss=trained.loss, grads=trained.grads)


def random_weights(
    net: ir.Net, rng: np.random.Generator, gain: float = 1.5
) -> dict[str, np.ndarray]:
    """Uniform weights a little wider than PyTorch's default init, float32, PyTorch layouts."""
    out = {}
    for lay in net.trainable:
        bound = gain / np.sqrt(lay.n_weights // lay.out_shape.maps)
        out[f"{lay.name}.weight"] = rng.uniform(-bound, bound, lay.weight_shape).astype(np.float32)
        out[f"{lay.name}.bias"] = rng.uniform(-bound, bound, lay.out_shape.maps).astype(np.float32)
    return out
