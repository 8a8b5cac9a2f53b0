"""The PyTorch peers: the same networks (built from chaosgen's IR) trained with the spec's SGD
(torch.optim.SGD with its momentum, Nesterov and weight decay; plain SGD for the paper's nets) on
the CPU, at batch 1 and batch 64 with N intra-op threads, and PyTorch's Hogwild recipe (N
processes sharing the model through share_memory(), one thread each, batch 1). Two more ways to
run batch 64: the channels-last (NHWC) memory format, and `torch.compile` (inductor, whose CPU
backend emits and compiles C++ kernels for forward and backward, the closest peer to chaosgen;
the optimizer step stays eager). Compilation and warm-up happen before the clock starts."""

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
        model.parameters(),  # a torch.compile'd module yields its original's parameters
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


class PeerUnavailable(Exception):
    """This peer cannot run here (torch.compile without a working C++ toolchain, ...)."""


class Peer:
    """One PyTorch configuration ready to time: model, data layout and (compiled) graph built and
    warmed up by the constructor, so `rate` times training only.

    layout: "contiguous" (NCHW) or "channels_last" (NHWC, model and batches; NDHWC for
    volumes); compiled: the model under torch.compile(dynamic=False) (every timed batch has the
    warm-up's shape)."""

    def __init__(
        self,
        ir,
        images: np.ndarray,
        labels: np.ndarray,
        batch: int,
        threads: int,
        layout: str = "contiguous",
        compiled: bool = False,
        eta: float = 0.001,
    ):
        torch.set_num_threads(threads)
        torch.manual_seed(1)
        self.ir, self.batch, self.eta = ir, batch, eta
        self.fmt = torch.contiguous_format
        if layout == "channels_last":  # NHWC, or NDHWC for volumes
            self.fmt = torch.channels_last_3d if ir.input.volume else torch.channels_last
        self.model = build_model(ir).to(memory_format=self.fmt)
        if compiled:
            self.model = torch.compile(self.model, dynamic=False)
        x, y = self._tensors(images[: 4 * batch], labels[: 4 * batch])
        try:
            _sgd(ir, self.model, x, y, batch, eta)  # warm-up (and compilation)
        except Exception as e:  # inductor raises many kinds (missing compiler, codegen bugs)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PeerUnavailable(f"{type(e).__name__}: {first[:200]}") from e

    def _tensors(self, images: np.ndarray, labels: np.ndarray):
        whole = len(labels) // self.batch * self.batch  # full batches only (no recompilation)
        x = _batch(self.ir, images[:whole]).contiguous(memory_format=self.fmt)
        return x, torch.from_numpy(np.ascontiguousarray(labels[:whole], np.int64))

    def rate(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Images per second of SGD over `images` (the whole batches of them)."""
        x, y = self._tensors(images, labels)
        t0 = time.perf_counter()
        _sgd(self.ir, self.model, x, y, self.batch, self.eta)
        return len(y) / (time.perf_counter() - t0)


def train_rate(
    ir, images: np.ndarray, labels: np.ndarray, batch: int, threads: int, eta: float = 0.001
) -> float:
    """Images per second of SGD at `batch` with `threads` intra-op threads (after a warm-up)."""
    return Peer(ir, images, labels, batch, threads, eta=eta).rate(images, labels)


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
