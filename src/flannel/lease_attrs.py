"""What a lease publishes (``LeaseAttrs``, the lease value's JSON) and how the VXLAN MAC is read from it.

Every node reads every other node's attributes, so their bytes must be exactly what Go flanneld writes and
reads (spec §4, §5). Held compactly: thousands of them live in every flanneld (issue #16).
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from flannel.errors import LeaseDecodeError
from flannel.gojson import compact, fold, load_object
from flannel.ipaddr import go_ip_text, ipv4_int, ipv4_text, mac_text

UNSET_IPV4 = IPv4Address("0.0.0.0")

_ATTR_FIELDS = ["PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data"]

# BackendData exactly as Go's vxlan backend writes it (and as ``_raw`` re-serialises it); groups: VNI, VtepMAC.
_VXLAN_DATA_TEXT = r'\{"VNI":(0|[1-9][0-9]{0,9}),"VtepMAC":"([0-9a-f]{2}(?::[0-9a-f]{2}){5})"\}'
# A whole lease value as Go's vxlan backend writes it for an IPv4 node (``to_json`` writes the same bytes): the
# common case of a start-up's listing, matched in C (4 µs) instead of decoded and re-serialised (14 µs per lease).
_GO_VXLAN_VALUE = re.compile(
    rb'\{"PublicIP":"([0-9.]{7,15})","PublicIPv6":null,"BackendType":"vxlan",'
    rb'"BackendData":(' + _VXLAN_DATA_TEXT.encode() + rb')\}')

_VXLAN_DATA = re.compile(_VXLAN_DATA_TEXT)
_MAC_BITS = 48
_MAC_MASK = (1 << _MAC_BITS) - 1


def _pack(text: str | None) -> str | int | None:
    """Backend data text as ``LeaseAttrs`` holds it: Go's vxlan form as VNI << 48 | MAC, anything else as given."""
    if text is not None and (m := _VXLAN_DATA.fullmatch(text)) is not None:
        return _packed(m.group(1), m.group(2))
    return text


def _packed(vni: str | bytes, mac: str | bytes) -> int:
    """VNI << 48 | MAC from the matched texts (``str``, or ASCII ``bytes``: ``int`` reads both)."""
    digits = mac.replace(b":", b"") if isinstance(mac, bytes) else mac.replace(":", "")
    return int(vni) << _MAC_BITS | int(digits, 16)


def _mac_of(packed: int) -> str:
    return mac_text(packed & _MAC_MASK)


def _unpack(value: str | int | None) -> str | None:
    """The text ``_pack`` was given (the same bytes: the VNI has no leading zeros, the MAC is lower-case)."""
    if isinstance(value, int):
        return f'{{"VNI":{value >> _MAC_BITS},"VtepMAC":"{_mac_of(value)}"}}'
    return value


@dataclass(frozen=True, slots=True, init=False, repr=False)
class LeaseAttrs:
    """What a node publishes about itself: how to reach its subnet.

    The backend data are given and read as text (``backend_data``, ``backend_v6_data``). Text exactly in the
    form Go's vxlan backend writes (``{"VNI":1,"VtepMAC":"0a:…"}``, nearly every lease) is held as one number,
    VNI and MAC, and written out again on demand: 32 bytes instead of 80 a peer (issue #16). Equality and hashing
    see the same thing either way, since a given text is always held the same way. The public IPv4 address is
    held as its number (``public_ip_int``) and ``public_ip`` builds the address object on demand: the object cost
    48 bytes a peer more, kept alive by the vxlan plane's entries too (issue #16).
    """

    _public_ip: int = 0
    """``public_ip`` as a number: the IPv4 address other nodes use to reach this node; 0 when unset."""
    public_ipv6: IPv6Address | None = None
    """IPv6 address other nodes use to reach this node, if any."""
    backend_type: str = ""
    """Backend that wrote the lease ("vxlan", "host-gw", ...); empty for udp and alloc."""
    _data: str | int | None = None
    """``backend_data`` as held: the text, or VNI << 48 | VtepMAC for Go's vxlan form (``_pack``)."""
    _v6_data: str | int | None = None
    """``backend_v6_data`` as held, the same way."""

    def __init__(self, public_ip: IPv4Address | int = UNSET_IPV4, public_ipv6: IPv6Address | None = None,
                 backend_type: str = "", backend_data: str | None = None,
                 backend_v6_data: str | None = None) -> None:
        """``public_ip`` as an address or its number (``int(IPv4Address)``: the very number the address holds)."""
        if type(public_ip) is not int:
            public_ip = int(public_ip)
        elif not 0 <= public_ip <= 0xFFFFFFFF:
            raise ValueError(f"public_ip: {public_ip} is not an IPv4 address")
        object.__setattr__(self, "_public_ip", public_ip)
        object.__setattr__(self, "public_ipv6", public_ipv6)
        object.__setattr__(self, "backend_type", backend_type)
        object.__setattr__(self, "_data", _pack(backend_data))
        object.__setattr__(self, "_v6_data", _pack(backend_v6_data))

    @property
    def public_ip(self) -> IPv4Address:
        """IPv4 address other nodes use to reach this node; 0.0.0.0 when unset (IPv6-only). Built on each read:
        hot paths read ``public_ip_int``."""
        return IPv4Address(self._public_ip)

    @property
    def public_ip_int(self) -> int:
        """``public_ip`` as a number (0 when unset), without building the address object."""
        return self._public_ip

    @property
    def backend_data(self) -> str | None:
        """Backend-specific JSON for IPv4, as compact raw JSON text."""
        return _unpack(self._data)

    @property
    def backend_v6_data(self) -> str | None:
        """Backend-specific JSON for IPv6, as compact raw JSON text."""
        return _unpack(self._v6_data)

    def __repr__(self) -> str:
        return (f"LeaseAttrs(public_ip={self.public_ip!r}, public_ipv6={self.public_ipv6!r}, "
                f"backend_type={self.backend_type!r}, backend_data={self.backend_data!r}, "
                f"backend_v6_data={self.backend_v6_data!r})")

    def to_json(self) -> str:
        """Serialise byte-for-byte as Go does: fixed field order, compact, empty fields omitted."""
        parts = [
            f'"PublicIP":"{ipv4_text(self._public_ip)}"',  # digits and dots: nothing to escape
            f'"PublicIPv6":{json.dumps(go_ip_text(self.public_ipv6)) if self.public_ipv6 else "null"}',
        ]
        if self.backend_type:
            parts.append(f'"BackendType":{json.dumps(self.backend_type)}')
        if self.backend_data:
            parts.append(f'"BackendData":{self.backend_data}')
        if self.backend_v6_data:
            parts.append(f'"BackendV6Data":{self.backend_v6_data}')
        return "{" + ",".join(parts) + "}"

    @classmethod
    def from_json(cls, data: str | bytes) -> LeaseAttrs:
        """Decode a lease value; raise ``LeaseDecodeError`` with the reason when it is malformed."""
        m = _GO_VXLAN_VALUE.fullmatch(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
        if m is not None and (public := ipv4_int(m.group(1).decode("ascii"))) is not None:
            # Exactly what Go's vxlan backend writes (and ``to_json``): nothing to check beyond the address,
            # and the backend data is already in its compact form. Everything else is decoded in full below.
            attrs = cls(public_ip=public, backend_type="vxlan")
            object.__setattr__(attrs, "_data", _packed(m.group(3), m.group(4)))  # as ``_pack`` would hold it
            return attrs
        try:
            raw = fold(load_object(data, "lease value"), _ATTR_FIELDS)
            return cls(
                public_ip=_opt_ip(raw.get("PublicIP"), 4) or UNSET_IPV4,  # type: ignore[arg-type]
                public_ipv6=_opt_ip(raw.get("PublicIPv6"), 6),  # type: ignore[arg-type]
                backend_type=_opt_str(raw.get("BackendType"), "BackendType"),
                backend_data=_raw(raw.get("BackendData")),
                backend_v6_data=_raw(raw.get("BackendV6Data")),
            )
        except ValueError as exc:
            raise LeaseDecodeError(str(exc)) from None
        except RecursionError:  # re-serialising a value nested just below the decoder's limit
            raise LeaseDecodeError("lease value: JSON nested too deeply") from None

    def backend_json(self, v6: bool = False) -> dict[str, Any]:
        """The backend data decoded as an object (``{}`` when absent); ``LeaseDecodeError`` if not an object."""
        text = self.backend_v6_data if v6 else self.backend_data
        if not text:
            return {}
        # The text was re-serialised by ``_raw`` from an already validated value (no duplicate keys, no NaN),
        # so the plain C decoder is enough here; this runs once per peer per event.
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise LeaseDecodeError(f"{'BackendV6Data' if v6 else 'BackendData'}: {exc}") from None
        if not isinstance(value, dict):
            name = "BackendV6Data" if v6 else "BackendData"
            raise LeaseDecodeError(f"{name}: expected a JSON object, got {type(value).__name__}")
        return value


def _opt_ip(value: Any, version: int) -> IPv4Address | IPv6Address | None:
    if value is None or value == "":
        return None
    if version == 4 and isinstance(value, str) and (n := ipv4_int(value)) is not None:
        return IPv4Address(n)
    if not isinstance(value, str):
        raise ValueError(f"PublicIP{'v6' if version == 6 else ''}: expected a string, got {value!r}")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"PublicIP{'v6' if version == 6 else ''}: invalid IP address {value!r}") from None
    if version == 4 and isinstance(addr, IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is None:
            raise ValueError(f"PublicIP: {value!r} is not an IPv4 address")
        return mapped
    if version == 6 and isinstance(addr, IPv4Address):
        return IPv6Address(f"::ffff:{addr}")
    return addr


def _opt_str(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {value!r}")
    # Interned: thousands of leases name the same few backends ("vxlan"), one string each otherwise.
    return sys.intern(value)


def _raw(value: Any) -> str | None:
    if value is None:
        return None
    return compact(value)


def vtep_mac(attrs: LeaseAttrs, v6: bool = False) -> Any:
    """The ``VtepMAC`` member of a lease's backend data as Go reads it (keys case-insensitive), unchecked;
    ``None`` when absent; ``LeaseDecodeError`` when the data is not a JSON object.

    The lease guard and the vxlan backend both read it from every lease: the text Go's vxlan backend writes,
    which is nearly every lease, is matched directly instead of decoded twice (10 ms per 5000 leases each).
    """
    held = attrs._v6_data if v6 else attrs._data
    if isinstance(held, int):  # Go's form: ``LeaseAttrs`` already holds it as a number, never as text
        return _mac_of(held)
    data = attrs.backend_json(v6)
    mac = data.get("VtepMAC")
    if mac is None:  # Go matches keys case-insensitively; the exact spelling is the common case
        mac = fold(data, ["VtepMAC"]).get("VtepMAC")
    return mac


_MAC_TEXT = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def vtep_mac_int(attrs: LeaseAttrs, v6: bool = False) -> int | None:
    """``vtep_mac`` as a 48-bit number; ``None`` when absent or not a MAC (``aa:bb:cc:dd:ee:ff``, any case);
    ``LeaseDecodeError`` when the data is not a JSON object. Go's form is read straight from the number
    ``LeaseAttrs`` holds, without a text in between: the lease guard and the vxlan plane both read every lease."""
    held = attrs._v6_data if v6 else attrs._data
    if isinstance(held, int):
        return held & _MAC_MASK
    mac = vtep_mac(attrs, v6)
    if not isinstance(mac, str) or not _MAC_TEXT.match(mac.lower()):
        return None
    return int(mac.replace(":", ""), 16)
