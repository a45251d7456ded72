"""The local Ray instance of `gce-search run` listens on loopback only, checked on a running search."""
from __future__ import annotations

import ipaddress
import signal
import subprocess
from pathlib import Path

import psutil

from tests.search.test_driver import write_tiny_space
from tests.search.test_resume import cli
from tests.waiting import wait_until


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    # gRPC binds an IPv6 socket to the IPv4-mapped loopback address: only 127.0.0.1 reaches it.
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def listening_sockets(root: psutil.Process) -> list[tuple[int, str, str, int]]:
    """(pid, command, ip, port) of every listening TCP socket of `root` and everything it started."""
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            command = " ".join(proc.cmdline())[:120] or proc.name()
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.pid, command, conn.laddr.ip, conn.laddr.port))
        except psutil.NoSuchProcess:
            continue
    return found


def first_result_written(exp: Path) -> bool:
    return any(p.stat().st_size > 0 for p in exp.glob("trial_*/result.json"))


def test_every_socket_of_a_running_search_is_on_loopback(tmp_path):
    space = tmp_path / "long.yaml"
    space.write_text(Path(write_tiny_space(tmp_path, num_samples=2)).read_text()
                     .replace("epochs: 3", "epochs: 200"))
    storage = tmp_path / "results"
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen(cli("run", str(space), "--storage", str(storage), "--name", "lb"), cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: first_result_written(storage / "lb"),  # a trial actor is up and reporting
                   what="a first trial result", proc=proc, output=tmp_path / "run.log", watch=[storage])
        sockets = listening_sockets(psutil.Process(proc.pid))
        commands = " ".join(command for _, command, _, _ in sockets)
        # The check must see Ray's servers: the GCS, the raylet and a trial's worker (ray::...).
        assert "gcs_server" in commands and "raylet" in commands and "ray::" in commands, sockets
        exposed = [s for s in sockets if not is_loopback(s[2])]
        assert not exposed, f"listening beyond loopback: {exposed}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the driver saves the state and shuts its Ray down
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
                proc.kill()
                proc.wait()
        log.close()
