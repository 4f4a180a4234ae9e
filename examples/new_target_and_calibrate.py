"""Describe a new device in one TOML file, check it, and calibrate its cost model over TVM RPC.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python examples/new_target_and_calibrate.py --rpc 127.0.0.1:9090  # board via SSH tunnel
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python examples/new_target_and_calibrate.py --local   # a loopback RPC server here

TVM's RPC server is unauthenticated and unencrypted: whoever reaches its port can upload a shared library
and run it on the board. Never bind it to 0.0.0.0 on a network you do not fully control. Bind it to the
board's loopback and reach it through SSH, which authenticates and encrypts:

    pi$      python -m tvm.exec.rpc_server --host 127.0.0.1 --port 9090
    laptop$  ssh -N -L 9090:127.0.0.1:9090 pi@raspberrypi.local     # forwards this machine's 9090 to the board's
    laptop$  .venv/bin/python examples/new_target_and_calibrate.py --rpc 127.0.0.1:9090

(The server's ports for uploads are the same 9090 connection, so one forwarded port is enough.) `--local`
starts a server on 127.0.0.1 and calibrates the host-flavoured copy of the file against it: the same path a
board takes, on this machine.

The new file starts from a bundled one (every field is documented in targets/README.md); loading validates
every field and names the bad one. Calibration compiles micro-benchmarks with TVM, times them on the RPC
server, fits the coefficients by least squares and writes them back into the file atomically.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import hwopt  # noqa: E402
from hwopt.targets import calibrate, load_target  # noqa: E402

TARGETS = Path(hwopt.targets.__file__).parent


def write_target(path: Path, base: str, name: str, clock_mhz: float) -> None:
    text = (TARGETS / f"{base}.toml").read_text()
    text = re.sub(r'^name = ".*"$', f'name = "{name}"', text, count=1, flags=re.M)
    text = re.sub(r'^description = ".*"$', f'description = "{name}: {base} core at {clock_mhz:g} MHz"', text, count=1, flags=re.M)
    text = re.sub(r"^clock_mhz = .*$", f"clock_mhz = {clock_mhz:g}", text, count=1, flags=re.M)
    path.write_text(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--rpc", help="HOST:PORT of the board's TVM RPC server (TVM RPC is unauthenticated: use an SSH "
                                     "tunnel to a server on the board's loopback, see above)")
    where.add_argument("--local", action="store_true", help="start a loopback RPC server and use the host")
    ap.add_argument("--out", default="my-board.toml")
    args = ap.parse_args()

    out = Path(args.out)
    # a Cortex-A72 board clocked at 1.8 GHz (a Pi 4 overclocked); --local describes this machine instead
    write_target(out, "host" if args.local else "cortex-a72", "my-board", 1800)
    target = load_target(out)
    print(f"{target.name}: {target.description}; peak {target.peak_macs_per_s / 1e9:.1f} GMAC/s")

    server = None
    rpc = args.rpc
    if args.local:
        port = free_port()
        # --port-end: the server takes the first free port in [port, port-end), 9199 by default
        server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                                   "--port-end", str(port + 1)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the loopback TVM RPC server did not start")
                time.sleep(0.3)
        rpc = f"127.0.0.1:{port}"
    try:
        rc = calibrate.main(["--target", str(out), "--rpc", rpc, "--size", "tiny", "--no-models"])
    finally:
        if server is not None:
            os.killpg(server.pid, 15)
    print(load_target(out).calibration_info)
    return rc


if __name__ == "__main__":
    sys.exit(main())
