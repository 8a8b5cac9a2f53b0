"""The update rule and the learning-rate schedule: the `train` statement's momentum, weight decay
and lr_policy, the layers' multipliers, and what the native update (runtime.hpp) is handed.

The rule is torch.optim.SGD's (dampening 0): g = grad + weight_decay * decay_mult * w;
v = momentum * v + g; step = g + momentum * v (Nesterov) or v; w -= eta(iter) * lr_mult * step.
Caffe's SGDSolver keeps the learning rate inside the velocity (v = mu v + lr g; w -= v): the two
agree while eta is constant and differ when it changes (docs/language.md, "train")."""

from __future__ import annotations

import math

import numpy as np

from . import ir
from .parse import Statement

MAX_MOMENTUM = 1.0  # momentum in [0, 1)
MAX_WEIGHT_DECAY = 1.0  # weight_decay in [0, 1]
MAX_BATCH = 1 << 20
# the runtime's codes (cg_config.lr_policy): 0 = one eta for the whole call (fixed; exp changes it
# per epoch, in Python), else eta(iter) every iteration
POLICY_CODES = {"fixed": 0, "exp": 0, "step": 1, "inv": 2, "cosine": 3}
PER_ITERATION = ("step", "inv", "cosine")
_NEEDS = {"step": ("gamma", "step_size"), "inv": ("gamma", "power")}


def _given(st: Statement, key: str) -> bool:
    return any(a.key == key for a in st.attrs)


def check_train(ck, st: Statement, a: dict) -> dict | None:
    """The update-rule fields of ir.Training from a checked `train` statement's attributes `a`
    (exp's gamma is written into a["decay"]); None after reporting an error (located, on `ck`)."""
    bad = []

    def err(key: str, msg: str) -> None:
        ck.error(ck.loc_of(st, key), f"train: {msg}")
        bad.append(key)

    mu, wd = float(a["momentum"]), float(a["weight_decay"])
    if not 0 <= mu < MAX_MOMENTUM:
        err("momentum", f"'momentum' must be in [0, {MAX_MOMENTUM:g}), found {a['momentum']}")
    if not 0 <= wd <= MAX_WEIGHT_DECAY:
        err("weight_decay", f"'weight_decay' must be in [0, {MAX_WEIGHT_DECAY:g}], found {wd:g}")
    if a["nesterov"] not in ("true", "false"):
        err("nesterov", f"'nesterov' must be true or false, found '{a['nesterov']}'")
    elif a["nesterov"] == "true" and mu == 0 and "momentum" not in bad:
        err("nesterov", "nesterov=true needs momentum > 0 (as torch.optim.SGD)")
    policy = a["lr_policy"] or "exp"
    if policy not in ir.LR_POLICIES:
        err("lr_policy", f"unknown lr_policy '{policy}'; expected one of "
            f"{', '.join(ir.LR_POLICIES)}")
        return None
    if _given(st, "decay") and policy != "exp":
        err("decay", f"'decay' is lr_policy exp's factor per epoch; lr_policy {policy} takes "
            f"{' and '.join(_NEEDS.get(policy, ())) or 'no factor'}")
    for key in ("gamma", "power", "step_size"):
        needed = key in _NEEDS.get(policy, ()) or (key == "gamma" and policy == "exp")
        if _given(st, key) and not needed:
            err(key, f"lr_policy {policy} takes no '{key}'")
        elif key in _NEEDS.get(policy, ()) and not _given(st, key):
            ck.error(st.loc, f"train: lr_policy {policy} needs '{key}'")
            bad.append(key)
    g, p, n = a["gamma"], a["power"], a["step_size"]
    if g is not None and "gamma" not in bad:
        lo_hi = (0.0, 1.0) if policy in ("exp", "step") else (0.0, math.inf)
        if not lo_hi[0] < g <= lo_hi[1]:
            err("gamma", f"'gamma' of lr_policy {policy} must be in (0, {lo_hi[1]:g}], found {g}")
        elif policy == "exp" and _given(st, "decay"):
            err("gamma", "'gamma' and 'decay' both give exp's factor; keep one")
        elif policy == "exp":
            a["decay"] = float(g)
    if p is not None and "power" not in bad and not 0 < p <= 100:
        err("power", f"'power' must be in (0, 100], found {p}")
    if n is not None and "step_size" not in bad and not 1 <= n <= 2**62:
        err("step_size", f"'step_size' must be a positive number of iterations, found {n}")
    b = a["batch"]
    if b is not None and not 1 <= b <= MAX_BATCH:
        err("batch", f"'batch' must be between 1 and {MAX_BATCH}, found {b}")
    if bad:
        return None
    return dict(momentum=mu, nesterov=a["nesterov"] == "true", weight_decay=wd,
                lr_policy=policy, gamma=float(g or 0.0), power=float(p or 0.0),
                step_size=int(n or 0), batch=int(b or 0))


def check_multipliers(ck, st: Statement, what: str, a: dict) -> dict | None:
    """A trainable layer's lr_mult, decay_mult, bias_lr_mult, bias_decay_mult, each in
    [0, MAX_MULT]; None after reporting an error."""
    from .check import MAX_MULT

    ok = True
    for k in ir.MULTIPLIERS:
        if not 0 <= a[k] <= MAX_MULT:
            ck.error(ck.loc_of(st, k), f"{what}: '{k}' must be in [0, {MAX_MULT:g}], found {a[k]}")
            ok = False
    return {k: float(a[k]) for k in ir.MULTIPLIERS} if ok else None


def multipliers(net: ir.Net) -> np.ndarray | None:
    """cg_config.mults: float32 (blocks, 4) in ir.MULTIPLIERS order; None when all are 1."""
    m = np.array([[getattr(t, k) for k in ir.MULTIPLIERS] for t in net.trainable], np.float32)
    return None if (m == 1).all() else np.ascontiguousarray(m)


def iterations(n_images: int, scheme: str, batch: int) -> int:
    """Iterations of an epoch of n_images: images, or the averaged scheme's steps (Caffe's
    mini-batch `iter`)."""
    return -(-n_images // batch) if scheme == "averaged" else n_images


def eta_at(policy: str, eta: float, it: int, gamma: float, power: float, step_size: int,
           max_iter: int) -> float:
    """eta at iteration `it` of a per-iteration policy (Caffe's SGDSolver::GetLearningRate for
    step and inv; cosine: PyTorch's CosineAnnealingLR closed form, eta_min 0, T_max max_iter).
    The runtime computes the same in double (runtime.hpp, eta_at); this gives the log's values."""
    if policy == "step":
        return eta * gamma ** (it // step_size)
    if policy == "inv":
        return eta * (1.0 + gamma * it) ** -power
    if policy == "cosine":
        return eta * 0.5 * (1.0 + math.cos(math.pi * it / max_iter))
    return eta
