"""klog-style logging on stderr, so flanneld's log reads like upstream's and existing log tooling keeps working.

Format: ``I1128 06:24:13.123456   12345 main.py:42] message``. The user info of any URL in a line
(``http://user:password@host``) is replaced by ``<redacted>`` whatever logged it, a library included.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from flannel.secret import redact_urls

_LEVEL_CHAR = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E",
               logging.CRITICAL: "F"}


class KlogFormatter(logging.Formatter):
    """Render records in klog's header format."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        micros = int((record.created % 1) * 1_000_000)
        head = (f"{_LEVEL_CHAR.get(record.levelno, 'I')}{t.tm_mon:02d}{t.tm_mday:02d} "
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d} {os.getpid():7d} "
                f"{record.filename}:{record.lineno}] ")
        # A multi-line message is a batch of events (e.g. kernel changes): every line gets its own header so
        # that each stays one greppable log line.
        text = head + record.getMessage().replace("\n", "\n" + head)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return redact_urls(text)


def setup_logging(verbosity: int) -> None:
    """INFO by default; ``-v 4`` and above also shows DEBUG (upstream logs neighbour/FDB calls at V(4))."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KlogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 4 else logging.INFO)
    for noisy in ("grpc", "asyncio", "etcd3aio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
