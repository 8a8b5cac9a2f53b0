"""Two "hosts" on one machine: network namespaces joined by a veth pair, Open MPI over TCP
between them, to measure a real network path (the kernel's TCP over a virtual link, not the
loopback device) with `chaosgen calibrate-network` and bench/mpi.py.

    sudo python bench/netns.py                       # calibrate-network + small net, K = 100
    sudo python bench/netns.py --bench-args "--nets small,large --ks 100,1000 --epochs 1"

Needs root (ip netns, ip link) and iproute2. Sets up namespaces cg-a (10.77.0.1) and cg-b
(10.77.0.2), a veth pair between them, a hostfile, and an rsh agent for Open MPI: mpirun runs in
cg-a and starts the daemon of host 10.77.0.2 through the agent, which runs it with `ip netns exec
cg-b`. Every process of the job lives in one of the two namespaces, and MPI's messages (the
daemons' and the ranks', `--mca btl self,tcp`) cross the veth pair. Tears everything down at the
end, also after a failure or Ctrl-C. Prints the network profile and bench/mpi.py's table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOSTS = {"cg-a": ("cg-va", "10.77.0.1"), "cg-b": ("cg-vb", "10.77.0.2")}
SUBNET = "10.77.0.0/24"
AGENT = """#!/bin/sh
# Open MPI's rsh agent: "$0 HOST COMMAND..." runs COMMAND in HOST's namespace.
host=$1; shift
case "$host" in
{cases}
  *) echo "netns agent: unknown host $host" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" sh -c "$*"
"""


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def setup() -> None:
    """The namespaces, the veth pair, addresses, links up (lo too: local daemons talk on it)."""
    for ns in HOSTS:
        sh("ip", "netns", "add", ns)
    (a_if, _), (b_if, _) = HOSTS.values()
    sh("ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if)
    for ns, (dev, addr) in HOSTS.items():
        sh("ip", "link", "set", dev, "netns", ns)
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def teardown() -> None:
    """End what still runs in the namespaces (processes this script started), delete them (the
    veth pair goes with them)."""
    for ns in HOSTS:
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "del", ns, check=False)


def mpirun_args(tmp: Path) -> list[str]:
    """mpirun's arguments for a job over the pair: hostfile, agent, TCP on the pair only."""
    hostfile = tmp / "hosts"
    hostfile.write_text("".join(f"{addr} slots=1\n" for _, addr in HOSTS.values()))
    agent = tmp / "agent.sh"
    cases = "\n".join(f"  {addr}) ns={ns} ;;" for ns, (_, addr) in HOSTS.items())
    agent.write_text(AGENT.format(cases=cases))
    agent.chmod(0o755)
    return [
        "--hostfile", str(hostfile), "--mca", "plm_rsh_agent", str(agent),
        "--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", SUBNET,
        "--mca", "oob_tcp_if_include", SUBNET, "--map-by", "node",
        "-x", "PYTHONPATH", "-x", "OMPI_ALLOW_RUN_AS_ROOT", "-x", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM",
    ]  # fmt: skip


def in_host(argv: list[str], env: dict[str, str]) -> int:
    """Run argv in namespace cg-a (where mpirun starts), output passed through."""
    print(f"netns: {shlex.join(argv)}", flush=True)
    return subprocess.run(["ip", "netns", "exec", "cg-a", *argv], env=env).returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench-args", default="--nets small --ks 100,1000 --epochs 1",
                    help="bench/mpi.py's arguments (default: %(default)s)")  # fmt: skip
    ap.add_argument("--data", default=os.environ.get("CHAOSGEN_DATA"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("netns: needs root (ip netns add, ip link add): run it with sudo")
    for tool in ("ip", "mpirun"):
        if shutil.which(tool) is None:
            sys.exit(f"netns: {tool} not found (apt-get install iproute2 openmpi-bin)")
    if any(sh("ip", "netns", "pids", ns, check=False).returncode == 0 for ns in HOSTS):
        sys.exit(f"netns: namespace {' or '.join(HOSTS)} exists already: "
                 f"`ip netns del` them if no other run of this script is going on")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMPI_ALLOW_RUN_AS_ROOT": "1",
           "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="netns-") as t:
        tmp = Path(t)
        try:
            setup()
            how = shlex.join(mpirun_args(tmp))
            profile = tmp / "network.json"
            rc = in_host([sys.executable, "-m", "chaosgen.cli", "calibrate-network", "--out",
                          str(profile), "--mpirun-args", how], env)  # fmt: skip
            if rc == 0:
                print(json.dumps(json.loads(profile.read_text()), indent=1))
                bench = [sys.executable, str(ROOT / "bench" / "mpi.py"), "--mpirun-args", how,
                         *shlex.split(args.bench_args)]  # fmt: skip
                if args.data:
                    bench += ["--data", args.data]
                rc = in_host(bench, env)
        except subprocess.CalledProcessError as e:
            print(f"netns: {shlex.join(e.cmd)} failed: {e.stderr.strip()}", file=sys.stderr)
            rc = 1
        finally:
            teardown()
    return rc


if __name__ == "__main__":
    sys.exit(main())
