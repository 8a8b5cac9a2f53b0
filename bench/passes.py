"""Per-pass kernel times of every conv and pool layer: A/B of two checkouts on a busy machine.

For each network, each checkout's code generator renders net.cpp (the cost model's weight-gradient
forms, so that both sides run the same forms; or --forms) and a timing program around it; every
conv layer's forward, backward data and weight gradient and every pool layer's forward and
backward data is timed on one image's real activations
and deltas, as the best of 40 windows of 1 ms each (a window that another process interrupted is
slower, not faster: the best is the undisturbed time). The programs run interleaved, --rounds
times; printed: the median microseconds per image of each pass, and new / old.

    python bench/passes.py --nets small,medium,large                 # this checkout only
    git worktree add /tmp/old HEAD~3                                  # (or: git archive | tar -x)
    python bench/passes.py --nets small --against /tmp/old --rounds 6 # old vs this checkout
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WINDOWS, WINDOW_S = 40, 0.001

PROGRAM = r"""#include "net.cpp"
#include <algorithm>
#include <cstdio>
template <class F> static double best_us(F &&f) {
    double best = 1e30;
    for (int r = 0; r < %(windows)d; ++r) {
        long calls = 0;
        const double t0 = omp_get_wtime();
        double t = t0;
        do { f(); ++calls; t = omp_get_wtime(); } while (t - t0 < %(window_s)g);
        best = std::min(best, (t - t0) / calls * 1e6);
    }
    return best;
}
int main() {
    using namespace net;
    float *P = chaos::alloc_floats(N_PARAMS), *G = chaos::alloc_floats(N_PARAMS);
    float *work = chaos::alloc_floats(WORK_FLOATS), *image = chaos::alloc_floats(IMAGE_STRIDE);
    if (!P || !G || !work || !image) return 1;
    unsigned s = 12345u;  // weights and pixels from a fixed linear congruential sequence
    auto next = [&s]() { s = s * 1664525u + 1013904223u; return (s >> 8) * (1.0f / 16777216.0f); };
    for (int k = 0; k < N_PARAMS; ++k) P[k] = 0.2f * (next() - 0.5f);
    for (int k = 0; k < IMAGE_SIZE; ++k) image[k] = next();
    chaos::NoProfile prof;
    train_image(P, work, G, image, 0, [](int) {}, prof);  // every layer's activations and deltas
    std::printf("{");
%(calls)s
    std::printf("}\n");
    return 0;
}
"""


def render(checkout: str, net: str, out: str, forms: dict | None) -> None:
    """(In a child process with `checkout` first on sys.path) write net.cpp, its header and the
    timing program t.cpp into `out`."""
    sys.path.insert(0, checkout)
    from chaosgen import codegen
    from chaosgen.pipeline import front_end
    from chaosgen.targets import native_target

    spec = net if net.endswith(".net") else str(Path(checkout) / "specs" / f"{net}.net")
    _, ir = front_end(spec)
    target = native_target()
    source = codegen.render(ir, target, (), forms=forms)
    calls = []
    for v in codegen.layer_views(ir, target, (), forms):
        n, ns, x = v["name"], v["ns"], v["x"]
        if v["kind"] == "pool":
            calls.append((f"{n} forward", f"{ns}::forward({x}, work + Y_{n})"))
            if v["needs_dx"]:
                dx = f"{ns}::backward_data({x}, work + Y_{n}, work + D_{n}, {v['dx']})"
                calls.append((f"{n} backward_data", dx))
        if v["kind"] != "conv":
            continue
        calls.append((f"{n} forward", f"{ns}::forward(P, {x}, work + Y_{n})"))
        if v["needs_dx"]:
            calls.append(
                (f"{n} backward_data", f"{ns}::backward_data(P, work + D_{n}, {v['dx']})")
            )
        label = f"{n} backward_weights ({v['grad_form']})"
        calls.append((label, f"{ns}::backward_weights({x}, work + D_{n}, G)"))
    lines = [
        f'    std::printf("{", " if k else ""}\\"{label}\\": %.4f", best_us([&] {{ {call}; }}));'
        for k, (label, call) in enumerate(calls)
    ]
    o = Path(out)
    (o / "net.cpp").write_text(source.cpp)
    (o / codegen.HEADER_NAME).write_text(source.header)
    program = PROGRAM % {"windows": WINDOWS, "window_s": WINDOW_S, "calls": "\n".join(lines)}
    (o / "t.cpp").write_text(program)


def build(checkout: str, net: str, out: Path, forms: dict | None) -> Path:
    """Render with `checkout`'s code generator, compile with chaosgen's flags for this machine."""
    from common import ROOT  # noqa: F401  (puts this checkout on sys.path)

    from chaosgen.targets import default_compiler_for, native_target

    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, __file__, "--render", checkout, net, str(out), json.dumps(forms)]
    subprocess.run(args, check=True)
    target = native_target()
    compiler = default_compiler_for(target)
    exe = out / "t"
    cmd = [compiler.cxx, *compiler.program_flags(target), "-o", str(exe), str(out / "t.cpp")]
    subprocess.run(cmd, check=True)
    return exe


def main() -> int:
    """Build, run interleaved, print medians and ratios."""
    if len(sys.argv) == 6 and sys.argv[1] == "--render":
        render(sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]))
        return 0
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nets", default="small,medium,large", help="names under specs/ or paths")
    ap.add_argument("--against", default=None, metavar="DIR", help="the old checkout (A)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--forms", default=None, help='JSON, e.g. {"c2": "taps/6x4"} (default: model)')
    a = ap.parse_args()
    forms = json.loads(a.forms) if a.forms else None
    sides = ([("old", str(Path(a.against).resolve()))] if a.against else []) + [
        ("new", str(HERE.parent))
    ]
    from common import loadavg

    load = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        exes = {
            (net, side): build(path, net, Path(tmp) / f"{Path(net).stem}-{side}", forms)
            for net in a.nets.split(",")
            for side, path in sides
        }
        times: dict = {}
        for _ in range(a.rounds):
            for key, exe in exes.items():
                env = os.environ | {"OMP_NUM_THREADS": "1"}
                out = subprocess.run(
                    [str(exe)], check=True, capture_output=True, text=True, env=env
                )
                for label, us in json.loads(out.stdout).items():
                    times.setdefault((*key, label), []).append(us)
    print(f"us per image, median of {a.rounds} rounds (best of {WINDOWS} x {WINDOW_S * 1e3:g} ms)")
    print(f"load average {load} before, {loadavg()} after")
    for net in a.nets.split(","):
        for (n, side, label), us in times.items():
            if n != net or side != "new":
                continue
            new = statistics.median(us)
            line = f"{Path(net).stem:8} {label:32} {new:8.3f}"
            if (net, "old", label) in times:
                old = statistics.median(times[(net, "old", label)])
                line += f"  old {old:8.3f}  new/old {new / old:.2f}x"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
