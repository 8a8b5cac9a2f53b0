"""Check generated kernels against an independent PyTorch float64 forward and backward.

Run on the shipped specs and on random valid networks (strides, odd kernels, 1x1 maps, every
activation, both losses). Prints the worst relative error per network; exits 1 above --tol.

    python bench/oracle.py --random 30 --seed 1
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import chaosgen  # noqa: E402
from chaosgen import ir  # noqa: E402

ACTS = ("scaled_tanh", "tanh", "sigmoid", "relu", "linear")
TOL = 2e-5  # relative to the largest reference value of each array


def torch_reference(net: ir.Net, weights: dict, x: np.ndarray, label: int, dtype: str = "float64"):
    """Output and parameter gradients (float64 by default), written independently of the
    templates."""
    import torch
    import torch.nn.functional as F

    def act(name, z):
        if name == "scaled_tanh":
            return 1.7159 * torch.tanh(0.66666667 * z)
        if name == "tanh":
            return torch.tanh(z)
        if name == "sigmoid":
            return torch.sigmoid(z)
        if name == "relu":
            return torch.relu(z)
        if name == "softmax":
            return torch.softmax(z, dim=-1)
        return z

    dt = getattr(torch, dtype)
    w = {k: torch.tensor(v, dtype=dt, requires_grad=True) for k, v in weights.items()}
    s = net.input
    h = torch.tensor(x, dtype=dt).reshape(1, s.maps, *s.dims)
    for lay in net.layers:
        volume = lay.in_shape.volume  # 3D: conv3d and the 3D pools
        if isinstance(lay, ir.Conv):
            conv = F.conv3d if volume else F.conv2d
            h = act(
                lay.activation,
                conv(h, w[f"{lay.name}.weight"], w[f"{lay.name}.bias"], stride=lay.stride,
                     padding=lay.pad),
            )
        elif isinstance(lay, ir.Pool):
            if lay.op == "max":
                pool = F.max_pool3d if volume else F.max_pool2d
            else:
                pool = F.avg_pool3d if volume else F.avg_pool2d
            h = pool(h, lay.window, lay.strides, ceil_mode=lay.round == "ceil")
        elif isinstance(lay, ir.Dropout):
            pass  # the identity: forward() evaluates, gradients() without a key keeps every unit
        else:
            h = act(
                lay.activation,
                F.linear(h.reshape(1, -1), w[f"{lay.name}.weight"], w[f"{lay.name}.bias"]),
            )
    y = h.reshape(-1)
    onehot = torch.zeros_like(y)
    onehot[label] = 1.0
    if net.output.loss == "cross_entropy":
        loss = -torch.log(y[label])
    else:
        loss = 0.5 * ((y - onehot) ** 2).sum()
    loss.backward()
    return y.detach().numpy(), {k: v.grad.numpy() for k, v in w.items()}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Largest error relative to the largest magnitude of the reference."""
    scale = max(float(np.abs(b).max()), 1e-12)
    return float(np.abs(a.astype(np.float64) - b).max()) / scale


def check_net(
    path: str, images: int = 3, seed: int = 0, target: str = "native", tol: float = TOL
) -> tuple[float, float]:
    """(worst relative error, worst error / allowed error) of the forward output and of every
    gradient over a few random images. The allowed error is `tol`, or 10x PyTorch's own error
    in float32 where that is larger (a sum that cancels loses digits in any float32 code)."""
    net = chaosgen.compile(path, target=target)
    rng = np.random.default_rng(seed)
    s = net.ir.input
    worst = ratio = 0.0
    for _ in range(images):
        x = rng.uniform(0, 1, (s.maps, *s.dims)).astype(np.float32)
        label = int(rng.integers(net.ir.output.out_shape.size))
        weights = net.get_weights()
        y64, g64 = torch_reference(net.ir, weights, x, label)
        y32, g32 = torch_reference(net.ir, weights, x, label, "float32")
        pairs = [(net.forward(x), y64, y32)]
        g = net.gradients(x, label)
        pairs += [(g[k], g64[k], g32[k]) for k in g64]
        for mine, ref, ref32 in pairs:
            err = rel_err(mine, ref)
            worst = max(worst, err)
            ratio = max(ratio, err / max(tol, 10 * rel_err(ref32, ref)))
    return worst, ratio


def random_spec(rnd: random.Random, i: int) -> str:
    """A random valid network: conv (any stride), pools that tile, dense layers, an output."""
    maps = rnd.choice((1, 1, 2, 3))
    h, w = rnd.randint(1, 40), rnd.randint(1, 40)
    if rnd.random() < 0.15:  # rows longer than the registers hold: cut into pieces
        h, w = rnd.randint(1, 6), rnd.randint(300, 900)
    lines = [f"network r{i}", f"input maps={maps} size={h}x{w}"]
    n = 0
    for _ in range(rnd.randint(0, 4)):
        n += 1
        kind = rnd.choice(("conv", "conv", "pool"))
        if kind == "conv":
            kh, kw = rnd.randint(1, min(h, 7)), rnd.randint(1, min(w, 7))
            st = rnd.choice((1, 1, 1, 2, 3))
            maps = rnd.choice((1, 2, 3, 5, 8, 16, 17, 24, 40))
            act = rnd.choice(ACTS)
            lines.append(f"conv c{n}: maps={maps} kernel={kh}x{kw} stride={st} activation={act}")
            h, w = (h - kh) // st + 1, (w - kw) // st + 1
        else:
            dh = [d for d in range(1, min(h, 4) + 1) if h % d == 0]
            dw = [d for d in range(1, min(w, 4) + 1) if w % d == 0]
            wh, ww = rnd.choice(dh), rnd.choice(dw)
            op = rnd.choice(("maxpool", "avgpool"))
            lines.append(f"{op} p{n}: window={wh}x{ww}")
            h, w = h // wh, w // ww
    for _ in range(rnd.randint(0, 2)):
        n += 1
        lines.append(f"dense f{n}: units={rnd.randint(1, 70)} activation={rnd.choice(ACTS)}")
    if rnd.random() < 0.7:
        lines.append("output out: classes=10 activation=softmax loss=cross_entropy")
    else:
        lines.append(
            f"output out: classes={rnd.randint(2, 12)} activation={rnd.choice(ACTS)} loss=mse"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    """Shipped specs, then --random networks; report and fail above --tol."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random", type=int, default=20, help="random networks to check")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tol", type=float, default=TOL)
    ap.add_argument("--no-shipped", action="store_true")
    ap.add_argument(
        "--target", default="native", help="a target this host runs: native, avx2, ..."
    )
    args = ap.parse_args()
    bad = 0
    paths = [] if args.no_shipped else [str(p) for p in sorted((ROOT / "specs").glob("*.net"))]
    rnd = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="cg-oracle-"))
    for i in range(args.random):
        p = tmp / f"r{i}.net"
        p.write_text(random_spec(rnd, i))
        paths.append(str(p))
    for p in paths:
        err, ratio = check_net(p, target=args.target, tol=args.tol)
        flag = "ok" if ratio <= 1 else "FAIL"
        bad += ratio > 1
        print(
            f"{flag:4} {err:9.2e} ({ratio:4.2f} of allowed)  {p}"
            + ("" if ratio <= 1 else "\n" + Path(p).read_text())
        )
    print(f"{len(paths) - bad}/{len(paths)} within {args.tol:g} (or 10x PyTorch float32's error)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
