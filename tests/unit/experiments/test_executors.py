"""Executors: a local Ray listens on the loopback only; a cluster address that does not answer fails at once."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relaxlab.experiments.executors import ExecutorError, RayExecutor, check_address, is_loopback

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)")


def _listening() -> dict[int, str]:
    """Socket inode -> local address of every TCP socket in LISTEN state (IPv4 and IPv6)."""
    found = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            raw, _ = fields[1].split(":")
            data = bytes.fromhex(raw)
            # each 32-bit word is in host (little-endian) order
            data = b"".join(data[i : i + 4][::-1] for i in range(0, len(data), 4))
            found[int(fields[9])] = socket.inet_ntop(family, data)
    return found


def _descendants(root: int) -> set[int]:
    """``root`` and every process below it."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def _sockets_of(pids: set[int]) -> dict[int, set[int]]:
    """pid -> inodes of its sockets."""
    out: dict[int, set[int]] = {}
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        out[pid] = {int(link[8:-1]) for link in links if link.startswith("socket:[")}
    return out


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


@needs_ray
@needs_proc
def test_a_local_ray_listens_on_the_loopback_only(tmp_path: Path) -> None:
    """Every socket that the driver and the processes of the local Ray it starts (GCS server, raylet,
    workers, agents) listen on is a loopback address, while a task runs."""
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process")
    started, stop = tmp_path / "started", tmp_path / "stop"
    executor = RayExecutor(1)
    assert executor._start(ray)
    try:

        @ray.remote(num_cpus=1)
        def busy() -> int:  # runs until the test has looked (however loaded the machine is)
            started.write_text(str(os.getpid()))
            deadline = time.monotonic() + 120
            while not stop.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return os.getpid()

        ref = busy.remote()
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        listening = _listening()
        sockets = _sockets_of(_descendants(os.getpid()))
        seen = {
            (pid, listening[inode])
            for pid, inodes in sockets.items()
            for inode in inodes
            if inode in listening
        }
        commands = {pid: _command(pid) for pid, _ in seen}
        stop.touch()
        worker = ray.get(ref)
    finally:
        ray.shutdown()
    assert any("gcs_server" in c for c in commands.values()) and any("raylet" in c for c in commands.values())
    assert worker in commands  # the worker listens too (the driver, where it does, is among `seen` as well)
    exposed = sorted((address, commands[pid][:80]) for pid, address in seen if not is_loopback(address))
    assert not exposed, exposed


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2", "example.org"]))


def test_an_address_nothing_answers_at_is_refused_in_one_line() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for address, message in [
        (f"127.0.0.1:{port}", "no Ray cluster answers at"),
        ("127.0.0.1", "is not host:port"),
        ("ray://:x", "is not host:port"),
    ]:
        with pytest.raises(ExecutorError, match=message):
            check_address(address)
    with socket.socket() as server:  # something answers: accepted (Ray then talks to it)
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_address(f"127.0.0.1:{server.getsockname()[1]}")


@needs_ray
def test_sweep_with_an_address_that_does_not_answer_fails_at_once(tmp_path: Path) -> None:
    """``relaxlab sweep --address 127.0.0.1:1`` exits with one line instead of retrying forever (Ray's
    own client rewrites the address and retries without end; the timeout only guards the test)."""
    sweep = tmp_path / "s.toml"
    sweep.write_text('[base]\narchitecture = "FC-S"\nepochs = 1\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "relaxlab",
            "sweep",
            str(sweep),
            "--out",
            str(tmp_path / "out"),
            "--address",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "no Ray cluster answers at 127.0.0.1:1" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr and len((done.stderr + done.stdout).strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
