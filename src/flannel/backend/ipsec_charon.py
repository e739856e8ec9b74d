"""strongSwan's ``charon`` as flanneld's child, and the VICI session that drives it (spec §10.7).

The process: found where upstream looks for it, started with the parent-death signal SIGTERM (so that a
flanneld killed with SIGKILL does not leave it behind) and stdout/stderr inherited, stopped with SIGTERM. Its
configuration is the host's own strongSwan configuration (``/etc/strongswan.conf``, or ``STRONGSWAN_CONF``
from flanneld's environment, which charon inherits). Beyond upstream, a charon that exits on its own is
started again with back-off; the reconcile then loads its keys and connections again.

A host may already run its own charon (a VPN of its own). Upstream starts a second one, which exits at once
("charon already running"), and then talks to the host's over the shared VICI socket without knowing it. Two
charons cannot share one host anyway (one IKE port, one VICI socket), so here the host's charon is used on
purpose: found by its pidfile or by the process at the other end of the VICI socket, said so in the log, never
stopped, and watched; when it exits, flanneld starts its own. flannel's connections and keys carry its own
names, and nothing else of the host's charon is touched.

The session: the ``vici`` package from PyPI, which is synchronous, so every request runs in a worker thread
(``asyncio.to_thread``) under one lock, with a socket timeout so that a wedged charon cannot hold a request
for ever. Any failure closes the session; the next request connects again. All of VICI's errors surface as
``CharonError``, which the backend's retry and reconcile loops know how to ride out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from flannel.backoff import Backoff
from flannel.errors import FlannelError

log = logging.getLogger(__name__)

CHARON_PATHS = (
    "charon",  # on PATH
    "/usr/lib/strongswan/charon",  # Alpine, Arch, upstream's image
    "/usr/lib/ipsec/charon",  # Debian, Ubuntu
    "/usr/libexec/strongswan/charon",  # CentOS, RHEL
    "/usr/libexec/ipsec/charon",  # openSUSE, SLES
)
VICI_URI = "unix:///var/run/charon.vici"
VICI_PATH = VICI_URI.removeprefix("unix://")
PIDFILE = "/var/run/charon.pid"
"""Where charon writes its pid, and refuses to start while that process lives."""
CHARON_NAMES = ("charon", "charon-systemd")
"""The process names (``/proc/<pid>/comm``) of strongSwan's IKE daemons."""
EXTERNAL_POLL = 1.0
"""Seconds between checks that the host's charon (one flanneld did not start) still runs."""
VICI_TIMEOUT = 5.0
"""Seconds one VICI request may take before the session is dropped as wedged."""
STOP_TIMEOUT = 5.0
"""Seconds charon gets to exit after SIGTERM before it is killed."""
STABLE_AFTER = 60.0
"""Seconds of running after which a charon that exits is restarted at once again (the back-off starts over)."""
PR_SET_PDEATHSIG = 1


class CharonError(FlannelError):
    """charon could not be started, reached, or refused a request."""


def find_charon(which: Callable[[str], str | None] = shutil.which) -> str:
    """The first charon of upstream's list that exists and is executable."""
    for candidate in CHARON_PATHS:
        found = which(candidate)
        if found:
            return found
        log.debug("no charon executable at %s", candidate)
    raise CharonError(f"no charon executable found at {', '.join(CHARON_PATHS)}: install strongSwan's charon "
                      "(Debian: strongswan-charon, strongswan-libcharon, libstrongswan-standard-plugins)")


def _parent_death_signal() -> Callable[[], None]:
    """The ``preexec_fn`` that asks for SIGTERM when flanneld's forking thread goes away.

    libc is looked up here, in flanneld, because ``find_library`` runs programs: the child, forked from a
    process with threads (gRPC's, asyncio's workers), must do nothing between fork and exec but the one call.
    The signal follows the *thread* that forked, so charon must be started from the event loop's thread
    (``asyncio.create_subprocess_exec`` forks there), never from a worker thread that may end.
    """
    prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    term = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, term, 0, 0, 0)

    return preexec


def _comm(pid: int) -> str | None:
    """The process's name, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def _pidfile_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile) as f:
            text = f.read(64).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _vici_peer_pid(vici_path: str) -> int | None:
    """The pid of the process listening on the VICI socket (``SO_PEERCRED``), or None when nothing listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(1.0)
    try:
        sock.connect(vici_path)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    finally:
        sock.close()
    pid: int = struct.unpack("3i", creds)[0]
    return pid if pid > 0 else None


def running_charon(pidfile: str = PIDFILE, vici_path: str = VICI_PATH) -> int | None:
    """The pid of a charon already running on this host (one flanneld did not start), or None.

    Its pidfile names it while it starts, before its VICI socket opens; a charon that writes no pidfile
    (``charon-systemd``) is found at the other end of the VICI socket. A pidfile naming a live process that is
    no charon (a pid reused after a reboot) would make a new charon refuse to start: it is removed, with a
    warning.
    """
    pid = _pidfile_pid(pidfile)
    if pid is not None:
        name = _comm(pid)
        if name in CHARON_NAMES:
            return pid
        if name is not None:
            log.warning("%s names pid %d (%s), which is no charon; removing the stale pidfile", pidfile, pid, name)
            with contextlib.suppress(OSError):
                os.unlink(pidfile)
    return _vici_peer_pid(vici_path)


class CharonProcess:
    """One charon child: started by ``start``, kept running by ``supervise``, ended by ``stop``.

    Or the host's own charon, found running at ``start``: used, watched, never stopped (see the module's doc).
    """

    def __init__(self, path: str, on_restart: Callable[[], None] | None = None, pidfile: str = PIDFILE,
                 vici_path: str = VICI_PATH) -> None:
        self.path = path
        self.proc: asyncio.subprocess.Process | None = None
        self.external: int | None = None
        """The pid of the host's charon that flanneld uses instead of its own, if any."""
        self.on_restart = on_restart
        """Called after charon was started again (the backend then reloads keys and connections)."""
        self.pidfile = pidfile
        self.vici_path = vici_path
        self._stopping = False

    async def start(self) -> None:
        pid = await asyncio.to_thread(running_charon, self.pidfile, self.vici_path)
        if pid is not None:
            self.external = pid
            log.warning("charon (pid %d) already runs on this host and flanneld did not start it: using it over "
                        "unix://%s. flannel's connections and keys carry flannel's names and nothing else of it is "
                        "touched; it must load the plugins flannel needs (its strongswan.conf); flanneld will not "
                        "stop it, and starts its own charon if it exits. To have flanneld run its own charon, stop "
                        "the host's strongSwan.", pid, self.vici_path)
            return
        # No arguments: charon takes none that flannel needs, and nothing secret ever goes on a command line.
        self.proc = await asyncio.create_subprocess_exec(self.path, preexec_fn=_parent_death_signal())
        log.info("started charon %s (pid %d)", self.path, self.proc.pid)

    async def _watch_external(self) -> None:
        """Wait for the host's charon to exit, then start flanneld's own."""
        assert self.external is not None
        while _comm(self.external) in CHARON_NAMES:
            await asyncio.sleep(EXTERNAL_POLL)
        log.warning("the host's charon (pid %d) exited; flanneld starts its own", self.external)
        self.external = None
        await self.start()
        if self.on_restart is not None:
            self.on_restart()

    async def supervise(self) -> None:
        """Wait for charon to exit; unless flanneld is stopping it, start it again with back-off (1 s to 30 s)."""
        backoff = Backoff(1.0, 30.0)
        while True:
            while self.external is not None:
                await self._watch_external()
            if self.proc is None:
                await self.start()
                continue
            started = time.monotonic()
            code = await self.proc.wait()
            if self._stopping:
                return
            if time.monotonic() - started >= STABLE_AFTER:
                backoff.reset()
            wait = backoff.advance()
            log.error("charon (pid %d) exited with status %s; starting it again in %.0fs", self.proc.pid, code, wait)
            self.proc = None
            await asyncio.sleep(wait)
            await self.start()
            if self.on_restart is not None:
                self.on_restart()

    async def stop(self) -> None:
        """SIGTERM, as upstream; SIGKILL if charon has not exited within ``STOP_TIMEOUT``. The host's charon is
        left running, with flannel's connections loaded (as the kernel's policies are left)."""
        self._stopping = True
        if self.external is not None:
            log.info("leaving the host's charon (pid %d) running", self.external)
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("charon (pid %d) did not exit on SIGTERM within %gs; killing it", proc.pid, STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        log.info("stopped charon (pid %d)", proc.pid)


class Vici:
    """A VICI session to charon at ``path``, connected on first use and again after any failure."""

    def __init__(self, path: str = VICI_PATH, timeout: float = VICI_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._session: Any = None
        self._sock: socket.socket | None = None
        self._lock = asyncio.Lock()

    def _connect(self) -> Any:
        import vici  # the optional dependency of this backend only (extra "ipsec")

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        return vici.Session(sock)

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = self._session = None

    async def call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(session)`` in a worker thread; any failure becomes ``CharonError`` naming ``what``.

        ``what`` is the error's whole description: it must never carry the PSK (it names the request and the
        peer, no more), and neither may the request's own errors, which only quote charon's answer.
        """
        async with self._lock:
            return await asyncio.to_thread(self._call, what, fn)

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        from vici.exception import CommandException, DeserializationException, SessionException

        try:
            if self._session is None:
                self._session = self._connect()
            return fn(self._session)
        except CommandException as exc:  # charon answered: the session itself is fine
            raise CharonError(f"{what}: charon refused: {exc}") from None
        except (OSError, SessionException, DeserializationException) as exc:
            self._close()
            raise CharonError(f"{what}: charon at unix://{self.path} not reachable: {exc}") from None

    async def ping(self) -> str:
        """charon's version: proves the session works."""
        answer = await self.call("version", lambda s: s.version())
        return _text(answer.get("version", b""))

    async def load_shared(self, message: dict[str, Any], owner: str) -> None:
        await self.call(f"load-shared for {owner}", lambda s: s.load_shared(message))

    async def unload_shared(self, key_id: str) -> None:
        await self.call(f"unload-shared {key_id}", lambda s: s.unload_shared({"id": key_id}))

    async def shared_ids(self) -> set[str]:
        """The ids of the shared keys loaded with one (``get-shared``)."""
        answer = await self.call("get-shared", lambda s: s.get_shared())
        return {_text(k) for k in answer.get("keys", [])}

    async def load_conn(self, message: dict[str, Any]) -> None:
        name = next(iter(message))
        await self.call(f"load-conn {name}", lambda s: s.load_conn(message))

    async def unload_conn(self, name: str) -> None:
        await self.call(f"unload-conn {name}", lambda s: s.unload_conn({"name": name}))

    async def conn_names(self) -> set[str]:
        """The names of the loaded connections (``get-conns``)."""
        answer = await self.call("get-conns", lambda s: s.get_conns())
        return {_text(c) for c in answer.get("conns", [])}

    async def plugins(self) -> set[str]:
        """The plugins charon loaded (``stats``)."""
        answer = await self.call("stats", lambda s: s.stats())
        return {_text(p) for p in answer.get("plugins", [])}

    async def list_sas(self) -> list[dict[str, Any]]:
        """``list-sas``: one dict per IKE_SA, by connection name."""
        return list(await self.call("list-sas", lambda s: list(s.list_sas())))

    def close(self) -> None:
        self._close()


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def vici_socket_exists(path: str = VICI_PATH) -> bool:
    """Whether charon's socket file is there (it may still refuse connections while charon starts)."""
    return os.path.exists(path)
