"""Whether this kernel can make ipip devices, found once by trying in a throwaway namespace.

Tests that need a working ``flannel.ipip`` skip with ``IPIP_MISSING`` where it cannot; the test of the
start-up error runs only there.
"""

from __future__ import annotations

import functools

from tests.netns import have_root, new_netns

IPIP_MISSING = "kernel has no ipip module (CONFIG_NET_IPIP not set)"


@functools.cache
def ipip_unavailable() -> str | None:
    """Why ipip devices cannot be created here (no root, or no kernel support), or None when they can."""
    reason = have_root()
    if reason:
        return reason
    ns = new_netns(underlay=False)
    try:
        made = ns.ip("link", "add", "probe0", "type", "ipip", "local", "192.0.2.1", check=False)
    finally:
        ns.delete()
    if made.returncode == 0:
        return None
    if "unknown device type" in made.stderr.lower():
        return IPIP_MISSING
    return f"cannot create an ipip device: {made.stderr.strip()}"
