"""The PyTorch peer: the same networks (built from chaosgen's IR) trained with the spec's SGD
(torch.optim.SGD with its momentum, Nesterov and weight decay; plain SGD for the paper's nets) on
the CPU, at batch 1 and batch 64 with N intra-op threads, and PyTorch's Hogwild recipe (N
processes sharing the model through share_memory(), one thread each, batch 1)."""

from __future__ import annotations

import time

import numpy as np
import torch  # imported only where PyTorch is installed (bench/speed.py checks first)


class ScaledTanh(torch.nn.Module):
    """LeCun's 1.7159 tanh(2/3 z), as chaosgen's scaled_tanh."""

    def forward(self, z):
        return 1.7159 * torch.tanh(0.66666667 * z)


def build_model(ir):
    """A torch.nn.Sequential equivalent to the IR (the output layer yields logits if softmax)."""
    from torch import nn

    acts = {
        "scaled_tanh": ScaledTanh,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "relu": nn.ReLU,
        "linear": nn.Identity,
        "softmax": nn.Identity,
    }  # softmax: folded into the loss
    mods: list = []
    flat = False
    for lay in ir.layers:
        volume = lay.in_shape.volume  # 3D: Conv3d and the 3D pools
        if lay.kind == "conv":
            mods += [
                (nn.Conv3d if volume else nn.Conv2d)(
                    lay.in_shape.maps,
                    lay.out_shape.maps,
                    lay.kernel,
                    stride=lay.stride,
                    padding=lay.pad,
                ),
                acts[lay.activation](),
            ]
        elif lay.kind == "dropout":
            mods.append(nn.Dropout(lay.rate))
        elif lay.kind in ("maxpool", "avgpool"):
            if lay.kind == "maxpool":
                pool = nn.MaxPool3d if volume else nn.MaxPool2d
            else:
                pool = nn.AvgPool3d if volume else nn.AvgPool2d
            mods.append(pool(lay.window, lay.strides, ceil_mode=lay.round == "ceil"))
        else:
            if not flat:
                mods.append(nn.Flatten())
                flat = True
            mods += [nn.Linear(lay.in_shape.size, lay.out_shape.maps), acts[lay.activation]()]
    return nn.Sequential(*mods)


def _loss(ir, out, y):
    import torch.nn.functional as F

    if ir.output.loss == "cross_entropy":
        return F.cross_entropy(out, y)
    onehot = F.one_hot(y, out.shape[1]).to(out.dtype)
    return 0.5 * ((out - onehot) ** 2).sum(1).mean()


def _sgd(ir, model, x, y, batch: int, eta: float) -> None:
    t = ir.training  # the spec's update rule, as chaosgen trains it (bench/common.recipe)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=eta,
        momentum=t.momentum,
        nesterov=t.nesterov,
        weight_decay=t.weight_decay,
    )
    for b in range(0, len(y), batch):
        opt.zero_grad(set_to_none=True)
        _loss(ir, model(x[b : b + batch]), y[b : b + batch]).backward()
        opt.step()


def _batch(ir, images: np.ndarray):
    """(N, maps, h, w) float32 tensor of (N, h, w) or (N, maps, h, w) images (volumes: (N, maps,
    d, h, w))."""
    s = ir.input
    return torch.from_numpy(np.ascontiguousarray(images, np.float32)).reshape(-1, s.maps, *s.dims)


def train_rate(
    ir, images: np.ndarray, labels: np.ndarray, batch: int, threads: int, eta: float = 0.001
) -> float:
    """Images per second of SGD at `batch` with `threads` intra-op threads (after a warm-up)."""
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    model = build_model(ir)
    x = _batch(ir, images)
    y = torch.from_numpy(np.ascontiguousarray(labels, np.int64))
    _sgd(ir, model, x[: 4 * batch], y[: 4 * batch], batch, eta)  # warm-up
    t0 = time.perf_counter()
    _sgd(ir, model, x, y, batch, eta)
    return len(y) / (time.perf_counter() - t0)


def _hogwild_worker(ir, model, x, y, eta, barrier, out) -> None:
    torch.set_num_threads(1)
    _sgd(ir, model, x[:8], y[:8], 1, eta)  # warm-up
    barrier.wait()
    t0 = time.perf_counter()
    _sgd(ir, model, x, y, 1, eta)
    out.put((t0, time.perf_counter(), len(y)))


def hogwild_rate(
    ir, images: np.ndarray, labels: np.ndarray, procs: int, eta: float = 0.001
) -> float:
    """Images per second of PyTorch's Hogwild example: `procs` processes, one shared model."""
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    model = build_model(ir)
    model.share_memory()
    x = _batch(ir, images)
    y = torch.from_numpy(np.ascontiguousarray(labels, np.int64))
    ctx = mp.get_context("spawn")  # fork after OpenMP has started threads can deadlock
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    shards = np.array_split(np.arange(len(y)), procs)
    workers = [
        ctx.Process(
            target=_hogwild_worker, args=(ir, model, x[s].clone(), y[s].clone(), eta, barrier, out)
        )
        for s in shards
    ]
    for w in workers:
        w.start()
    done = [out.get() for _ in workers]
    for w in workers:
        w.join()
    # CLOCK_MONOTONIC (perf_counter) is shared by the processes of one machine
    return sum(n for *_, n in done) / (max(t1 for _, t1, _ in done) - min(t0 for t0, *_ in done))
