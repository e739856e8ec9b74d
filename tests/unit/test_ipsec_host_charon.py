"""Finding a charon that flanneld did not start (``running_charon``): by its pidfile, by the VICI socket's peer."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from flannel.backend.ipsec_charon import running_charon


def test_nothing_running_gives_none(tmp_path: Path) -> None:
    assert running_charon(str(tmp_path / "charon.pid"), str(tmp_path / "charon.vici")) is None


def test_a_pidfile_of_a_dead_process_is_no_charon(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    pidfile = tmp_path / "charon.pid"
    pidfile.write_text(f"{proc.pid}\n")
    assert running_charon(str(pidfile), str(tmp_path / "charon.vici")) is None
    assert pidfile.exists(), "charon removes a pidfile of a dead process itself"


def test_a_pidfile_naming_a_live_process_that_is_no_charon_is_removed(tmp_path: Path) -> None:
    pidfile = tmp_path / "charon.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # pytest: alive, not a charon
    assert running_charon(str(pidfile), str(tmp_path / "charon.vici")) is None
    assert not pidfile.exists()


def test_the_process_listening_on_the_vici_socket_is_found(tmp_path: Path) -> None:
    path = tmp_path / "charon.vici"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        assert running_charon(str(tmp_path / "charon.pid"), str(path)) == os.getpid()
    assert running_charon(str(tmp_path / "charon.pid"), str(path)) is None  # a socket file nobody listens on
