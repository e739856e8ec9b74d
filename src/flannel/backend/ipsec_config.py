"""The ipsec backend's ``Backend`` section, and what it asks of charon and the kernel per peer (spec §10.7).

Pure functions only, so that the exact wire-relevant values (the connection as loaded over VICI, the three XFRM
policies, the MTU) can be compared with upstream's table in unit tests without a charon or a kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from flannel.backend.backend_config import bool_key, read_section
from flannel.errors import ConfigError
from flannel.netlink.xfrm import XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT, XfrmPolicy
from flannel.secret import NO_SECRET, Secret

_FIELDS = ["PSK", "UDPEncap", "ESPProposal", "UserspaceESP"]
DEFAULT_ESP_PROPOSAL = "aes128gcm16-sha256-prfsha256-ecp256"
IKE_PROPOSAL = "aes256-sha256-modp4096"
"""Upstream's fixed IKE proposal: both ends must offer it."""
MIN_PSK_LENGTH = 96
PSK_TOO_SHORT = "config error, password is too short"
"""Upstream's message, kept word for word."""
REQID = 11
"""The reqid that ties flannel's XFRM policies to the SAs charon negotiates (upstream's ``defaultReqID``)."""
IPSEC_OVERHEAD = 77
"""Upstream's ESP tunnel overhead: outer IP 20, SPI and sequence 8, IV 16, padding up to 15, trailer 2, ICV 16."""
UDP_ENCAP_OVERHEAD = 8
"""The UDP header in front of ESP when ``UDPEncap`` is set."""
LIBIPSEC_DEVICE = "ipsec0"
"""The TUN device of charon's kernel-libipsec plugin (``UserspaceESP``)."""
LIBIPSEC_MTU = 1400
"""The MTU kernel-libipsec gives ``ipsec0``: strongSwan's ``TUN_DEFAULT_MTU``, fixed in its code (5.9 has no
setting for it), and the buffer size it reads packets with, so it must not be raised behind charon's back."""


@dataclass(frozen=True)
class IPsecConfig:
    """Settings of the ipsec data plane."""

    psk: Secret[str] = NO_SECRET
    """The IKE pre-shared key, the same on every node (at least 96 characters)."""
    udp_encap: bool = False
    """Force UDP encapsulation of ESP (port 4500), e.g. through NAT or firewalls that drop protocol 50."""
    esp_proposal: str = DEFAULT_ESP_PROPOSAL
    """The ESP (CHILD_SA) proposal, in strongSwan's syntax."""
    userspace_esp: bool = False
    """Not upstream: ESP in charon's kernel-libipsec plugin (a TUN device) instead of the kernel, for kernels
    without ESP. charon then installs its own (userspace) policies and routes, and flanneld none in the kernel."""


def parse_ipsec_config(backend: Mapping[str, Any]) -> IPsecConfig:
    """Read the ``Backend`` object; raise ``ConfigError`` naming ``Backend.<key>`` on a bad value.

    The PSK is wrapped in ``Secret`` before anything else touches it, and never quoted in an error: a PSK of the
    wrong type is reported by its type alone.
    """
    raw = read_section("ipsec", backend, _FIELDS)
    psk = raw.get("PSK")
    if psk is not None and not isinstance(psk, str):
        raise ConfigError(f"Backend.PSK must be a string, got a JSON {type(psk).__name__}", "Backend.PSK")
    secret = Secret(psk or "")
    if len(secret.reveal()) < MIN_PSK_LENGTH:
        raise ConfigError(PSK_TOO_SHORT, "Backend.PSK")
    proposal = raw.get("ESPProposal")
    if proposal is None:
        proposal = DEFAULT_ESP_PROPOSAL
    if not isinstance(proposal, str):
        raise ConfigError(f"Backend.ESPProposal must be a string, got {proposal!r}", "Backend.ESPProposal")
    if not proposal:
        raise ConfigError("Backend.ESPProposal must not be empty", "Backend.ESPProposal")
    return IPsecConfig(psk=secret, udp_encap=bool_key(raw, "UDPEncap"), esp_proposal=proposal,
                       userspace_esp=bool_key(raw, "UserspaceESP"))


def ipsec_mtu(ext_mtu: int, udp_encap: bool, userspace_esp: bool = False) -> int:
    """``FLANNEL_MTU``: the external interface's MTU less the ESP overhead (and the UDP header with UDPEncap).

    With ``UserspaceESP`` pod packets pass ``ipsec0`` first, whose MTU (1400) is below upstream's figure for a
    1500-byte underlay (1423): the pods get the lower of the two, and the UDP header always counts, since
    kernel-libipsec always encapsulates ESP in UDP.
    """
    if userspace_esp:
        return min(ext_mtu - IPSEC_OVERHEAD - UDP_ENCAP_OVERHEAD, LIBIPSEC_MTU)
    return ext_mtu - IPSEC_OVERHEAD - (UDP_ENCAP_OVERHEAD if udp_encap else 0)


@dataclass(frozen=True)
class Peer:
    """One tunnel between this node and a remote one: what charon and the kernel are told about it."""

    local_ip: IPv4Address
    """This node's public IP."""
    local_subnet: IPv4Network
    """This node's lease subnet."""
    remote_ip: IPv4Address
    """The remote node's public IP."""
    remote_subnet: IPv4Network
    """The remote node's lease subnet."""

    @property
    def conn_name(self) -> str:
        """The connection's name in charon: ``<localPub>-<localSubnet>-<remoteSubnet>-<remotePub>``."""
        return f"{self.local_ip}-{self.local_subnet}-{self.remote_subnet}-{self.remote_ip}"

    @property
    def child_name(self) -> str:
        """The CHILD_SA's name: ``<localSubnet>-<remoteSubnet>``."""
        return f"{self.local_subnet}-{self.remote_subnet}"

    def policies(self) -> list[XfrmPolicy]:
        """The out, in and fwd policies, all ESP tunnel mode with reqid 11."""
        out = XfrmPolicy(self.local_subnet, self.remote_subnet, XFRM_POLICY_OUT, self.local_ip, self.remote_ip, REQID)
        return [out] + [
            XfrmPolicy(self.remote_subnet, self.local_subnet, d, self.remote_ip, self.local_ip, REQID)
            for d in (XFRM_POLICY_IN, XFRM_POLICY_FWD)
        ]


def connection(peer: Peer, cfg: IPsecConfig) -> dict[str, Any]:
    """The ``load-conn`` message for ``peer``: every setting of upstream's table, and nothing else.

    Identities are not set: charon then uses the public IPs, and finds the PSK by them (its owners). With
    ``UserspaceESP`` charon installs the policies (in kernel-libipsec, which also routes the remote subnet to
    its TUN device): the one setting that differs, and it never reaches the peer.
    """
    child = {
        "local_ts": [str(peer.local_subnet)],
        "remote_ts": [str(peer.remote_subnet)],
        "esp_proposals": [cfg.esp_proposal],
        "start_action": "start",
        "close_action": "trap",
        "dpd_action": "restart",
        "mode": "tunnel",
        "reqid": str(REQID),
        "rekey_time": "1h",
        "policies": "yes" if cfg.userspace_esp else "no",
    }
    ike = {
        "local_addrs": [str(peer.local_ip)],
        "remote_addrs": [str(peer.remote_ip)],
        "proposals": [IKE_PROPOSAL],
        "version": "2",
        "keyingtries": "0",
        "encap": "true" if cfg.udp_encap else "false",
        "local": {"auth": "psk"},
        "remote": {"auth": "psk"},
        "children": {peer.child_name: child},
    }
    return {peer.conn_name: ike}


def shared_key_id(owner: IPv4Address) -> str:
    """The id flannel gives the PSK it loads for ``owner``, so a reload replaces it and ``get-shared`` lists it."""
    return f"flannel-{owner}"


def shared_key(owner: IPv4Address, psk: Secret[str]) -> dict[str, Any]:
    """The ``load-shared`` message: the PSK, type IKE, owned by ``owner`` (a public IP).

    Holds the PSK in clear: handed straight to the VICI client, never logged or kept.
    """
    return {"id": shared_key_id(owner), "type": "IKE", "data": psk.reveal(), "owners": [str(owner)]}
