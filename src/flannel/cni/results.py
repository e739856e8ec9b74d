"""CNI results converted between spec versions, as the CNI library's converters do (``pkg/types/{020,040,100}``).

Needed only when a delegate was called with another version than the caller's (see ``invoke.call``), so it
is loaded only then. The conversions work on plain JSON objects:

* 1.0.0 and 1.1.0 share one result format; so do 0.3.0, 0.3.1 and 0.4.0; and 0.1.0 and 0.2.0;
* 1.x → 0.3/0.4 adds ``version`` ("4"/"6") to each IP and drops the interface fields 0.4 lacks, and back;
* 0.3+ → 0.1/0.2 keeps the first IPv4 and the first IPv6 address (``ip4``/``ip6``) and files each route under
  the family of its destination (only ``dst`` and ``gw`` survive); at least one address is required;
* 0.1/0.2 → 0.3+ turns ``ip4``/``ip6`` into ``ips`` and gathers their routes.

Fields a format does not have are dropped, as Go drops them when it decodes into the target's structs.
"""

from __future__ import annotations

from flannel.cni.cidr import parse_cidr
from flannel.cni.lite import Struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

_FORMATS = {
    "0.1.0": "020",
    "0.2.0": "020",
    "0.3.0": "040",
    "0.3.1": "040",
    "0.4.0": "040",
    "1.0.0": "100",
    "1.1.0": "100",
}


def convert_result(result: Any, to_version: str, from_version: str) -> dict[str, Any]:
    """``result`` (in its ``cniVersion``, else ``from_version``) in the format of ``to_version``.

    Raises ``ValueError`` when the result is not a CNI result or cannot be expressed in the target format.
    """
    if not isinstance(result, dict):
        raise ValueError("cannot convert result: not a JSON object")
    source = result.get("cniVersion") or from_version
    if source not in _FORMATS or to_version not in _FORMATS:
        raise ValueError(f"cannot convert result from version {source!r} to {to_version!r}")
    src, dst = _FORMATS[source], _FORMATS[to_version]
    if src == dst:
        same = dict(result)
        same["cniVersion"] = to_version
        return same
    hub = _from_020(result) if src == "020" else _from_100(result) if src == "100" else result
    if dst == "040":
        return _as_040(hub, to_version)
    if dst == "100":
        return _to_100(hub, to_version)
    return _to_020(hub, to_version)


def _is_ipv4(cidr_text: Any) -> bool:
    if not isinstance(cidr_text, str):
        raise ValueError(f"cannot convert result: invalid address {cidr_text!r}")
    try:
        return parse_cidr(cidr_text).is_ipv4()
    except ValueError as exc:
        raise ValueError(f"cannot convert result: {exc}") from None


def _list(result: dict[str, Any], key: str) -> list[Any]:
    value = result.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"cannot convert result: {key!r} is not a list of objects")
    return value


def _pick(obj: dict[str, Any], keys: Iterable[str]) -> Struct:
    """The given keys in this order, absent and empty ones dropped (Go's ``omitempty``)."""
    return Struct((k, obj[k]) for k in keys if obj.get(k) not in (None, ""))


def _interfaces(result: dict[str, Any]) -> list[Struct]:
    return [Struct(name=i.get("name") or "", **_pick(i, ("mac", "sandbox"))) for i in _list(result, "interfaces")]


def _from_100(result: dict[str, Any]) -> dict[str, Any]:
    """1.x → the 0.4.0 shape: each IP gets its family, interfaces lose ``mtu``/``socketPath``/``pciID``."""
    ips = [
        Struct(version="4" if _is_ipv4(ip.get("address")) else "6", **_pick(ip, ("interface", "address", "gateway")))
        for ip in _list(result, "ips")
    ]
    return {"interfaces": _interfaces(result), "ips": ips, "routes": _list(result, "routes"), "dns": result.get("dns")}


def _from_020(result: dict[str, Any]) -> dict[str, Any]:
    """0.1/0.2 → the 0.4.0 shape: ``ip4``/``ip6`` become ``ips``, their routes one list (IPv4 first)."""
    ips: list[Struct] = []
    routes: list[Any] = []
    for key, family in (("ip4", "4"), ("ip6", "6")):
        cfg = result.get(key)
        if cfg is None:
            continue
        if not isinstance(cfg, dict):
            raise ValueError(f"cannot convert result: {key!r} is not an object")
        ips.append(Struct(version=family, address=cfg.get("ip"), **_pick(cfg, ("gateway",))))
        routes += _list(cfg, "routes")
    return {"interfaces": [], "ips": ips, "routes": routes, "dns": result.get("dns")}


def _as_040(hub: dict[str, Any], version: str) -> Struct:
    out = Struct(cniVersion=version)
    interfaces = _interfaces(hub)
    if interfaces:
        out["interfaces"] = interfaces
    ips = [_pick(ip, ("version", "interface", "address", "gateway")) for ip in _list(hub, "ips")]
    if ips:
        out["ips"] = ips
    routes = _list(hub, "routes")
    if routes:
        out["routes"] = routes
    out["dns"] = hub.get("dns") or {}
    return out


def _to_100(hub: dict[str, Any], version: str) -> Struct:
    out = _as_040(hub, version)
    for ip in out.get("ips", []):
        ip.pop("version", None)
    if not out["dns"]:
        del out["dns"]
    return out


def _to_020(hub: dict[str, Any], version: str) -> Struct:
    by_family: dict[str, Struct] = {}
    for ip in _list(hub, "ips"):
        family = ip.get("version") or ("4" if _is_ipv4(ip.get("address")) else "6")
        if family in ("4", "6") and family not in by_family:
            by_family[family] = Struct(ip=ip.get("address"), **_pick(ip, ("gateway",)))
    if not by_family:
        raise ValueError("cannot convert: no valid IP addresses")
    for route in _list(hub, "routes"):
        family = "4" if _is_ipv4(route.get("dst")) else "6"
        if family in by_family:
            by_family[family].setdefault("routes", []).append(_pick(route, ("dst", "gw")))
    out = Struct(cniVersion=version)
    for family in ("4", "6"):
        if family in by_family:
            out[f"ip{family}"] = by_family[family]
    out["dns"] = hub.get("dns") or {}
    return out
