"""The cluster model (chaosgen/netmodel.py) and `chaosgen predict --nodes`: the ring allreduce's
cost against a step-by-step simulation of the ring, the loopback fit, and the table's arithmetic
against the one-machine model. No timing: the model is validated against the clock by
bench/mpi.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import ROOT

from chaosgen import netmodel
from chaosgen.cli import main
from chaosgen.pipeline import front_end
from chaosgen.predict import load_machine, machine_from_dict, predict, work_of

LARGE = str(ROOT / "specs" / "large.net")


def simulated_ring(buffers: list[np.ndarray], alpha: float, beta: float):
    """Run the ring allreduce on real arrays: N - 1 reduce-scatter steps, then N - 1 allgather
    steps, every rank sending one of N chunks to its right neighbour per step (all at once).
    Returns the reduced buffers and the time: per step, alpha plus the largest chunk sent over
    beta."""
    n = len(buffers)
    bufs = [b.copy() for b in buffers]
    chunks = np.array_split(np.arange(bufs[0].size), n)
    seconds = 0.0
    for step in range(n - 1):  # reduce-scatter: rank r sends chunk (r - step) mod n
        sent = [(r, (r - step) % n) for r in range(n)]
        data = [bufs[r][chunks[c]].copy() for r, c in sent]
        for (r, c), d in zip(sent, data, strict=True):
            bufs[(r + 1) % n][chunks[c]] += d
        seconds += alpha + max(d.nbytes for d in data) / beta
    for step in range(n - 1):  # allgather: rank r sends its complete chunk (r + 1 - step) mod n
        sent = [(r, (r + 1 - step) % n) for r in range(n)]
        data = [bufs[r][chunks[c]].copy() for r, c in sent]
        for (r, c), d in zip(sent, data, strict=True):
            bufs[(r + 1) % n][chunks[c]] = d
        seconds += alpha + max(d.nbytes for d in data) / beta
    return bufs, seconds


@pytest.mark.parametrize("nodes", [2, 3, 8])
def test_allreduce_cost_is_the_ring_simulation(nodes):
    rng = np.random.default_rng(nodes)
    floats = 64 * nodes * 10  # chunks of equal size: the closed form's assumption
    buffers = [rng.integers(-5, 5, floats).astype(np.float64) for _ in range(nodes)]
    net = netmodel.Network("t", alpha_s=3e-6, beta_bytes_per_s=2e9, source="test")
    reduced, seconds = simulated_ring(buffers, net.alpha_s, net.beta_bytes_per_s)
    for b in reduced:  # the simulation is a real allreduce
        assert np.array_equal(b, sum(buffers))
    assert net.allreduce_s(buffers[0].nbytes, nodes) == pytest.approx(seconds, rel=1e-12)
    assert net.allreduce_s(buffers[0].nbytes, 1) == 0.0


def test_fit_recovers_alpha_and_beta():
    alpha, beta = 7e-6, 0.7e9
    sizes = list(netmodel.SIZES)
    seconds = [2 * alpha + s / beta for s in sizes]
    got = netmodel.fit(sizes, seconds, nodes=2)
    assert got == pytest.approx((alpha, beta), rel=1e-9)


def test_one_node_is_the_one_machine_model_and_nodes_add_communication():
    _, net = front_end(LARGE)
    work, knc = work_of(net), load_machine("knc")
    edr = netmodel.NETWORKS["ib-edr"]
    one = netmodel.predict_nodes(work, knc, 240, 1, 100, edr, net.n_params, net="large")
    alone = predict(work, knc, 240, net="large", epochs=1)
    assert one.t_comm == 0 and one.per_epoch == pytest.approx(alone.total)
    eight = netmodel.predict_nodes(work, knc, 240, 8, 100, edr, net.n_params, net="large")
    shard = math.ceil(60000 / 8)
    assert eight.syncs == math.ceil(shard / 100)
    part = predict(work, knc, 240, net="large", images=shard, test_images=1250)
    assert eight.t_node == pytest.approx(part.total)
    ring = 2 * 7 * edr.alpha_s + 2 * 7 / 8 * 4 * net.n_params / edr.beta_bytes_per_s
    assert eight.t_comm == pytest.approx(eight.syncs * ring)


def test_predict_nodes_prints_speed_up_efficiency_and_where_communication_dominates(capsys):
    argv = ["predict", LARGE, "--nodes", "1,8,64", "--threads", "240", "--machine", "knc",
            "--network", "10GbE", "--sync-every", "1000"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "network 10GbE (alpha 15 us, beta 1.25 GB/s)" in out
    rows = [ln.split() for ln in out.splitlines() if ln.strip().split(" ")[0] in ("1", "8", "64")]
    assert [r[0] for r in rows] == ["1", "8", "64"]
    assert rows[0][-2:] == ["1.0x", "100%"]
    assert "K =  1,000: communication exceeds computation from " in out
    # the reported node count is the first power of two where T_comm > T_node
    _, net = front_end(LARGE)
    n = int(
        out.split("K =  1,000: communication exceeds computation from ")[1]
        .split()[0]
        .replace(",", "")
    )
    tenge, knc, work = netmodel.NETWORKS["10GbE"], load_machine("knc"), work_of(net)
    at = netmodel.predict_nodes(work, knc, 240, n, 1000, tenge, net.n_params, net="large")
    before = netmodel.predict_nodes(work, knc, 240, n // 2, 1000, tenge, net.n_params, net="large")
    assert at.t_comm > at.t_node and before.t_comm <= before.t_node
    assert main([*argv, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [r["nodes"] for r in got["rows"]] == [1, 8, 64]


def test_predict_nodes_refusals(capsys, tmp_path):
    base = ["predict", LARGE, "--machine", "knc"]
    assert main([*base, "--nodes", "1,8", "--threads", "1,2"]) == 2
    assert "--nodes: give one --threads count" in capsys.readouterr().err
    assert main([*base, "--nodes", "0", "--threads", "1"]) == 2
    assert "--nodes: every node count must be at least 1" in capsys.readouterr().err
    assert main([*base, "--nodes", "2", "--threads", "1", "--network", "token-ring"]) == 2
    assert "--network token-ring: not 10GbE, ib-edr, this, or a .json" in capsys.readouterr().err
    bad = tmp_path / "net.json"
    bad.write_text('{"name": "x"}')
    assert main([*base, "--nodes", "2", "--threads", "1", "--network", str(bad)]) == 1
    assert "not a network profile (KeyError" in capsys.readouterr().err


def test_per_chunk_call_and_per_sync_fixed_costs_add(tmp_path):
    """A calibrated call_s (machine) is paid once per chunk beyond a lone process's one call, a
    calibrated sync_s (network, read from its JSON) once per sync."""
    _, net = front_end(LARGE)
    knc = load_machine("knc")
    d = dict(knc.data)
    d["nets"] = {"large": {"operation_factor": dict(d["operation_factor"]), "call_s": 1e-3}}
    slow = machine_from_dict(d)
    path = tmp_path / "net.json"
    path.write_text(json.dumps({"name": "x", "alpha_s": 2e-6, "beta_bytes_per_s": 1e9,
                                "source": "test", "sync_s": 2e-3}))  # fmt: skip
    fixed = netmodel.load_network(str(path))
    bare = netmodel.Network("x", 2e-6, 1e9, "test")
    args = (work_of(net), 240, 8, 100)
    a = netmodel.predict_nodes(args[0], knc, *args[1:], bare, net.n_params, net="large")
    b = netmodel.predict_nodes(args[0], slow, *args[1:], fixed, net.n_params, net="large")
    assert b.syncs == a.syncs == math.ceil(math.ceil(60000 / 8) / 100)
    assert b.t_node - a.t_node == pytest.approx((a.syncs - 1) * 1e-3)
    assert b.t_comm - a.t_comm == pytest.approx(a.syncs * 2e-3)
    one = netmodel.predict_nodes(args[0], slow, 240, 1, 100, fixed, net.n_params, net="large")
    assert one.t_comm == 0 and one.per_epoch == pytest.approx(
        predict(args[0], slow, 240, net="large").total
    )
