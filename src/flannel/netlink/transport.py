"""The request/response machinery under ``Netlink``: one socket, sequence numbers, dumps and batches.

Two patterns cover everything flanneld does: a *dump* (one request, many multi-part replies until
NLMSG_DONE) and a *batch* (many requests packed into few ``sendto`` calls, one ACK each). The batch is
why this layer exists: waiting for each ACK before sending the next request, as pyroute2 does, is 15-20x
slower than ``ip -batch``.

Every wait for the kernel is bounded (SO_RCVTIMEO, ``REQUEST_TIMEOUT``, one second): a reply that never
comes raises ``NetlinkError(ETIMEDOUT)``, counted in ``flannel_netlink_timeouts_total``, instead of hanging
the daemon. The socket is then replaced, not drained: its late replies, or a dump the kernel is still
holding open for it (which would fail every later dump with EBUSY), go away with it, and draining would mean
waiting on the very kernel that just stopped answering.

The calls stay synchronous on the event loop, by measurement rather than habit: the kernel does rtnetlink
work inside our own ``send`` (a request, a whole batch chunk) and ``recv`` (the next part of a dump), so
every reply is already queued when we ask for it. Programming 5000 peers (15 000 ACKs), dumping 5000
routes, 5000 pipelined ``route get`` and 200 single requests: of 20 411 receives, not one found its socket
empty. A non-blocking socket on ``loop.add_reader`` would therefore never hand the loop back in normal
operation, only when a reply is lost, and it would make every backend's programming path async. The time a
call does hold the loop is the kernel's own work (three quarters of a batch is spent in ``send``); the
timeout bounds only the pathological case, to one second per missing reply.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
from array import array
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TypeAlias, TypeVar

from flannel import metrics
from flannel.netlink import nsenter, wire
from flannel.netlink.consts import (
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_GET_STRICT_CHK,
    NLM_F_ACK,
    NLM_F_ACK_TLVS,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_OVERRUN,
    NLMSGERR,
    NLMSGERR_ATTR_MSG,
    NLMSGHDR,
    SOL_NETLINK,
)
from flannel.netlink.errors import NetlinkError
from flannel.netlink.ops import Op

log = logging.getLogger(__name__)
T = TypeVar("T")
Parser: TypeAlias = Callable[[bytes, int, int], T | None]
"""Decodes one message (datagram, body start, end); None skips it."""
Steps: TypeAlias = Generator[None, None, T]
"""Work cut into steps: it yields where a caller may let other tasks run, and returns its result."""

_RECV_SIZE = 1 << 16
"""Bytes a reply datagram is read into. The kernel packs dumps into datagrams of at most 32 KiB (its cap on a
reader's buffer); one that would not fit is detected and fails its exchange, after which the buffer fits it.
A 256 KiB buffer, zero-filled and so resident, cost that much RSS for nothing (issue #16)."""
_CHUNK_BYTES = 128 << 10  # bytes of requests per sendto
_ACK_COST = 1024  # receive-buffer bytes one queued ACK costs (skb truesize, measured ~768), rounded up
_REPLY_COST = 8192  # the same for one queued answer to a get request (at most a page, plus overhead)
_MAX_INFLIGHT = 4096
_DUMP_RETRIES = 5
_HDR = NLMSGHDR.unpack_from
_ERR = NLMSGERR.unpack_from

REQUEST_TIMEOUT = 1.0
"""Seconds to wait for any one reply datagram before the request fails with ETIMEDOUT.

A deadline per reply, not per operation: a dump of 20 000 routes or a batch of 15 000 changes takes as
long as it takes while datagrams keep arriving. Since the kernel queues each reply before our ``recv``
asks for it (see the module docstring), only a lost reply or a wedged kernel ever waits at all; this is how
long such a fault freezes the event loop, and with it lease renewal, the watch and ``/healthz``.

It does not bound a request stuck *inside* the kernel behind a held rtnl lock: that thread sleeps
uninterruptibly in ``send``/``recv`` and no socket option can wake it.
"""


class Transport:
    """One NETLINK_ROUTE socket, optionally created inside a named network namespace.

    ``timeout`` bounds every wait for a reply (see ``REQUEST_TIMEOUT``); after one expires the socket is
    replaced by a fresh one in the same namespace.
    """

    def __init__(
        self, netns: str | None = None, *, bufsize: int = 4 << 20, timeout: float = REQUEST_TIMEOUT
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.netns = netns
        self.timeout = timeout
        self._bufsize = bufsize
        self._sock, rcvbuf = self._open()
        self._max_inflight = max(8, min(_MAX_INFLIGHT, rcvbuf // _ACK_COST))
        self._max_gets = max(8, min(_MAX_INFLIGHT, rcvbuf // _REPLY_COST))
        self._seq = 0
        self._buf = bytearray(_RECV_SIZE)
        self._view = memoryview(self._buf)

    def _open(self) -> tuple[socket.socket, int]:
        """A configured request socket and its receive-buffer size."""
        sock = self._socket()
        try:
            rcvbuf = nsenter.set_buffers(sock, self._bufsize)
            for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
                # Older kernels lack some: ACKs get bigger, errors terser, dumps filtered only by us.
                with contextlib.suppress(OSError):
                    sock.setsockopt(SOL_NETLINK, opt, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self.timeout))
        except BaseException:
            sock.close()
            raise
        return sock, rcvbuf

    def _socket(self) -> socket.socket:
        """A new, bound, unconfigured socket; NETLINK_ROUTE here, another family in a subclass (``xfrm``)."""
        return nsenter.route_socket(self.netns)

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seqs(self, count: int) -> int:
        first = (self._seq + 1) & 0xFFFFFFFF
        self._seq = (self._seq + count) & 0xFFFFFFFF
        return first

    def _recv(self, op: str, exchange: str) -> bytes:
        """The next reply datagram; ``exchange`` (request, dump, get, batch) labels a timeout's count."""
        try:
            # MSG_TRUNC: the datagram's whole length, even where it did not fit (then the rest of it is lost).
            n = self._sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
        except BlockingIOError:  # SO_RCVTIMEO ran out: recv fails with EAGAIN
            metrics.NETLINK_TIMEOUTS.labels(exchange).inc()
            err = NetlinkError(errno.ETIMEDOUT, op, f"no answer from the kernel within {self.timeout:g} s")
            self._replace_socket()
            raise err from None
        if n > len(self._buf):
            size = len(self._buf)
            self._buf = bytearray(-(-n // 4096) * 4096)  # the retry's datagram fits
            self._view = memoryview(self._buf)
            self._replace_socket()  # the rest of this exchange goes with the old socket
            raise NetlinkError(errno.EMSGSIZE, op, f"a reply of {n} bytes did not fit the {size}-byte receive "
                               "buffer (now enlarged; the next attempt reads it whole)")
        return bytes(self._view[:n])

    def _replace_socket(self) -> None:
        """Swap in a fresh socket; the old one takes its late replies and any unfinished dump with it."""
        old = self._sock
        self._sock, _rcvbuf = self._open()  # same size as before: _max_inflight still holds
        old.close()

    def _transact(self, mtype: int, flags: int, body: bytes, op: str) -> list[tuple[bytes, int, int, int]]:
        """Send one request with NLM_F_ACK; return its replies as (datagram, type, start, end).

        Raises NetlinkError when the kernel refuses it.
        """
        seq = self._next_seqs(1)
        self._sock.send(wire.message(mtype, flags | NLM_F_REQUEST | NLM_F_ACK, seq, body))
        replies: list[tuple[bytes, int, int, int]] = []
        while True:
            data = self._recv(op, "request")
            for rtype, _flags, rseq, start, end in wire.iter_messages(data):
                if rseq != seq:
                    continue  # a stale reply to an earlier, abandoned request
                if rtype == NLMSG_ERROR:
                    code = _ERR(data, start)[0]
                    metrics.count_kernel_request(op, -code)
                    if code:
                        raise NetlinkError(-code, op, _ack_detail(data, start, end, _flags))
                    return replies
                replies.append((data, rtype, start, end))

    def _dump(self, mtype: int, body: bytes, parse: Parser[T], op: str,
              restart: Callable[[], None] | None = None) -> list[T]:
        """Run a dump request to completion, retrying when the kernel flags it as interrupted or one datagram
        did not fit the receive buffer (``restart`` first forgets what a ``parse`` that keeps messages itself
        kept of the failed attempt)."""
        for _attempt in range(_DUMP_RETRIES):
            if restart is not None:
                restart()
            try:
                out, interrupted = self._dump_once(mtype, body, parse, op)
            except NetlinkError as exc:
                if exc.errno != errno.EMSGSIZE:
                    raise
                log.info("%s", exc)
                continue
            if not interrupted:
                return out
        raise NetlinkError(errno.EINTR, op, "dump kept being interrupted by concurrent changes")

    def _dump_steps(self, mtype: int, body: bytes, parse: Parser[T], op: str, rows: int) -> Steps[list[T]]:
        """``_dump`` whose decoding is cut into steps of ``rows`` messages (0: one step).

        The kernel's answer is read whole first, as one consistent listing, leaving the socket free for other
        requests between steps; decoding it is what takes time in Python (three quarters of a 5000-route
        listing), so that is the part a caller can interleave with other work.
        """
        # Each message is kept as its datagram and two offsets in arrays, not as a tuple: 16 bytes a message
        # instead of 72, which at 5000 peers is 0.3 MiB off every reconcile's peak (issue #16).
        datas: list[bytes] = []
        starts, ends = array("I"), array("I")

        def keep(data: bytes, start: int, end: int) -> None:
            datas.append(data)
            starts.append(start)
            ends.append(end)

        def forget() -> None:
            del datas[:], starts[:], ends[:]

        self._dump(mtype, body, keep, op, restart=forget)
        total = len(datas)
        if not rows:
            rows = total or 1
        out: list[T] = []
        append = out.append
        for first in range(0, total, rows):
            if first:
                yield
            for i in range(first, min(first + rows, total)):
                item = parse(datas[i], starts[i], ends[i])
                if item is not None:
                    append(item)
        return out

    def _dump_once(self, mtype: int, body: bytes, parse: Parser[T], op: str) -> tuple[list[T], bool]:
        seq = self._next_seqs(1)
        self._sock.send(wire.message(mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, body))
        out: list[T] = []
        append = out.append
        interrupted = False
        while True:
            data = self._recv(op, "dump")
            pos, size = 0, len(data)
            while pos + 16 <= size:
                length, rtype, flags, rseq, _pid = _HDR(data, pos)
                if length < 16 or pos + length > size:
                    break
                if rseq == seq:
                    if flags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if rtype == NLMSG_DONE:
                        code = _ERR(data, pos + 16)[0] if length >= 20 else 0
                        if code:
                            detail = _ack_detail(data, pos + 16, pos + length, flags, echoes_request=False)
                            raise NetlinkError(-code, op, detail)
                        return out, interrupted
                    if rtype == NLMSG_ERROR:
                        code = _ERR(data, pos + 16)[0] or -errno.EIO
                        raise NetlinkError(-code, op, _ack_detail(data, pos + 16, pos + length, flags))
                    if rtype == NLMSG_OVERRUN:
                        raise NetlinkError(errno.ENOBUFS, op, "dump overrun")
                    item = parse(data, pos + 16, pos + length)
                    if item is not None:
                        append(item)
                pos += (length + 3) & ~3

    def _get_each(self, mtype: int, bodies: Sequence[bytes], op: str) -> list[tuple[bytes, int, int] | int]:
        """Many get requests, pipelined like ``apply``; per request, its answer's (datagram, body start,
        end), or the positive errno the kernel refused it with.

        Sent without NLM_F_ACK, so the kernel answers each with exactly one message: the object asked
        for, or an NLMSG_ERROR. Requests in flight are bounded so that the answers fit the receive buffer.
        """
        total = len(bodies)
        out: list[tuple[bytes, int, int] | int] = [0] * total
        first = self._next_seqs(total)
        msgs = [wire.message(mtype, NLM_F_REQUEST, (first + n) & 0xFFFFFFFF, b) for n, b in enumerate(bodies)]
        send, recv = self._sock.send, self._recv
        i = 0
        while i < total:
            start_i, i = i, min(total, i + self._max_gets)
            send(b"".join(msgs[start_i:i]))
            pending = i - start_i
            while pending:
                data = recv(op, "get")
                pos, size = 0, len(data)
                while pos + 16 <= size:
                    length, rtype, _flags, rseq, _pid = _HDR(data, pos)
                    if length < 16:
                        break
                    idx = (rseq - first) & 0xFFFFFFFF
                    if start_i <= idx < i:
                        pending -= 1
                        if rtype == NLMSG_ERROR:
                            out[idx] = -_ERR(data, pos + 16)[0] or errno.EIO
                        else:
                            out[idx] = (data, pos + 16, pos + length)
                    pos += (length + 3) & ~3
        return out

    def apply(self, ops: Sequence[Op]) -> list[NetlinkError | None]:
        """Send every operation, pipelined, and return one result per operation, in order.

        None means the kernel applied it; a NetlinkError (whose ``op`` reads like the ``ip`` command)
        means it refused that one. A refusal does not stop the others: the kernel processes each request
        in a datagram independently. Requests in flight are bounded so that their ACKs always fit in the
        receive buffer; an overflow would silently drop ACKs.

        Raises NetlinkError(ETIMEDOUT) when ACKs stop coming; an unknown part of the batch is applied then.
        """
        total = len(ops)
        results: list[NetlinkError | None] = [None] * total
        if not total:
            return results
        first = self._next_seqs(total)
        # Pack everything before sending anything: a malformed op (say, a bad MAC) raises here, with
        # nothing half-applied.
        msgs = [op.pack((first + n) & 0xFFFFFFFF) for n, op in enumerate(ops)]
        failed: list[tuple[int, int, str]] = []
        send, recv = self._sock.send, self._recv
        batch_op = f"batch of {total} changes"
        i = 0
        while i < total:
            size = 0
            stop = min(total, i + self._max_inflight)
            start_i = i
            while i < stop and size < _CHUNK_BYTES:
                size += len(msgs[i])
                i += 1
            send(b"".join(msgs[start_i:i]))
            pending = i - start_i
            while pending:
                data = recv(batch_op, "batch")
                pos, dsize = 0, len(data)
                while pos + 20 <= dsize:
                    length, rtype, flags, rseq, _pid = _HDR(data, pos)
                    if length < 16:
                        break
                    idx = (rseq - first) & 0xFFFFFFFF
                    if rtype == NLMSG_ERROR and start_i <= idx < i:
                        pending -= 1
                        code = _ERR(data, pos + 16)[0]
                        if code:
                            failed.append((idx, -code, _ack_detail(data, pos + 16, pos + length, flags)))
                    pos += (length + 3) & ~3
        metrics.count_kernel_batch(ops, [(idx, code) for idx, code, _ in failed])
        if failed:
            names = self._names()
            for idx, code, detail in failed:
                results[idx] = NetlinkError(code, ops[idx].describe(names), detail)
        return results

    def _names(self) -> Mapping[int, str]:
        """Device names by index, to make error texts readable; overridden by ``Netlink``."""
        return {}


def drain(steps: Steps[T]) -> T:
    """Run stepped work to its end without pausing; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def _timeval(seconds: float) -> bytes:
    """``struct timeval`` for SO_RCVTIMEO; never all zero, which would mean "wait forever"."""
    sec, frac = divmod(seconds, 1.0)
    return struct.pack("@ll", int(sec), int(frac * 1e6) or (0 if sec else 1))


def _ack_detail(data: bytes, start: int, end: int, flags: int, echoes_request: bool = True) -> str:
    """The kernel's extended-ACK message (NLMSGERR_ATTR_MSG) of an NLMSG_ERROR/DONE body, if any."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    tlv_start = start + 4
    if echoes_request:
        if end - start < 20:
            return ""
        # The error code is followed by the request's header, and by its payload unless capped (0x100).
        tlv_start += 16 if flags & 0x100 else _HDR(data, start + 4)[0]
    msg = wire.attrs(data, tlv_start, end).get(NLMSGERR_ATTR_MSG)
    return wire.cstr(msg) if msg else ""
