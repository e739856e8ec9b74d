"""The delegate config: flannel's netconf plus ``subnet.env`` become a config for ``bridge`` (spec §13.3).

This is the whole of the plugin's own logic, so it is a pure function of its two inputs, and every upstream
test vector (§13.5) is a unit test of it. The output must be what upstream's Go plugin writes, byte for byte
once serialised: map keys sorted (Go marshals a map that way), routes in ``types.Route`` field order.
"""

from __future__ import annotations

from flannel.cni.cidr import format_cidr, format_ip, parse_cidr, parse_ip
from flannel.cni.errors import INVALID_NETWORK_CONFIG, CNIError
from flannel.cni.lite import Struct, dumps, fold_keys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from flannel.cni.netconf import NetConf
    from flannel.cni.subnet_file import SubnetEnv

DEFAULT_TYPE = "bridge"
DEFAULT_IPAM_TYPE = "host-local"
_ROUTE_FIELDS = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")
"""``types.Route``'s JSON fields, in declaration order (the order Go writes them)."""


def check_delegate(delegate: dict[str, Any] | None) -> None:
    """Reject a ``delegate`` section that flannel cannot complete, with upstream's messages (§13.1)."""
    if delegate is None:
        return
    if "type" in delegate and not isinstance(delegate["type"], str):
        raise CNIError(INVALID_NETWORK_CONFIG, "'delegate' dictionary, if present, must have (string) 'type' field")
    for key in ("name", "ipam"):
        if key in delegate:
            raise CNIError(
                INVALID_NETWORK_CONFIG, f"'delegate' dictionary must not have '{key}' field, it'll be set by flannel"
            )


def build_delegate(conf: NetConf, env: SubnetEnv) -> dict[str, Any]:
    """The delegate's network config for ``conf`` on a node described by ``env``.

    Keys the user set in ``delegate`` win, except ``name``, ``ipam``, ``cniVersion`` and ``runtimeConfig``,
    which come from the netconf.
    Raises :class:`CNIError` (code 7) for a ``delegate`` or ``ipam.routes`` that cannot be used.
    """
    check_delegate(conf.delegate)
    out = dict(conf.delegate or {})
    if conf.runtime_config is not None:
        out["runtimeConfig"] = conf.runtime_config
    out["name"] = conf.name
    out.setdefault("type", DEFAULT_TYPE)
    # The bridge masquerades only when flanneld does not (FLANNEL_IPMASQ covers the whole cluster network).
    out.setdefault("ipMasq", not env.ipmasq)
    out.setdefault("mtu", env.mtu)
    if out["type"] == "bridge":
        out.setdefault("isGateway", True)
    if conf.cni_version:
        out["cniVersion"] = conf.cni_version
    out["ipam"] = build_ipam(conf.ipam, env)
    return out


def build_ipam(ipam: dict[str, Any] | None, env: SubnetEnv) -> dict[str, Any]:
    """The delegate's ``ipam``: the input's keys, host-local by default, this node's ranges, routes appended."""
    out = dict(ipam or {})
    out.setdefault("type", DEFAULT_IPAM_TYPE)
    # `ranges` is always flannel's (one range set per family, IPv4 first); a user `subnet` key stays as given.
    out["ranges"] = [[{"subnet": format_cidr(net)}] for net in (env.subnet, env.ipv6_subnet) if net is not None]
    routes = parse_routes(out["routes"]) if "routes" in out else []
    routes += [Struct(dst=format_cidr(net)) for net in (*env.networks, *env.ipv6_networks)]
    out["routes"] = routes
    return out


def parse_routes(value: Any) -> list[Struct]:
    """``ipam.routes`` as Go's ``[]types.Route`` reads and writes it back: known fields only, in field order."""
    if value is None:
        return []
    try:
        if not isinstance(value, list):
            raise ValueError(f"routes must be a JSON array, not {type(value).__name__}")
        return [_route(item) for item in value]
    except ValueError as exc:
        raise CNIError(
            INVALID_NETWORK_CONFIG,
            f"failed to assemble Delegate IPAM: failed to read IPAM routes: failed to parse ipam.routes: {exc}",
        ) from None


def _route(item: Any) -> Struct:
    if not isinstance(item, dict):
        raise ValueError(f"a route must be a JSON object, not {type(item).__name__}")
    fields = fold_keys(item, _ROUTE_FIELDS)
    dst = fields.get("dst")
    if not isinstance(dst, str):
        raise ValueError(f"route {item} has no 'dst' string")
    route = Struct(dst=format_cidr(parse_cidr(dst)))
    gw = fields.get("gw")
    if gw not in (None, ""):
        if not isinstance(gw, str):
            raise ValueError(f"route 'gw' must be a string: {gw!r}")
        route["gw"] = format_ip(*parse_ip(gw))
    for key in _ROUTE_FIELDS[2:]:
        number = fields.get(key)
        if number is None:
            continue
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValueError(f"route {key!r} must be an integer: {number!r}")
        if number or key in ("table", "scope"):  # Go omits zero ints; table and scope are pointers
            route[key] = number
    return route


def render(delegate: dict[str, Any]) -> bytes:
    """The bytes saved under ``dataDir`` and sent to the delegate: compact JSON, Go's key order."""
    return dumps(delegate).encode()


def with_route_gateways(prev_result: Any) -> Any:
    """``prevResult`` for the delegate's CHECK, each route without ``gw`` given the gateway it was installed with.

    At ADD, the delegate installs a route that has no gateway via the gateway of the pod's address of the same
    family (``ipam.ConfigureIface``). CHECK in the reference plugins before v1.3.0, Debian 12's included, then
    looks for a route *without* a gateway and fails every flannel pod, whose routes have none. Naming the gateway
    the route really has makes CHECK exact with those plugins and changes nothing for newer ones.
    """
    if not isinstance(prev_result, dict):
        return prev_result
    ips, routes = prev_result.get("ips"), prev_result.get("routes")
    if not isinstance(ips, list) or not isinstance(routes, list):
        return prev_result
    gateways: dict[bool, str] = {}
    for ip in ips:
        gateway = ip.get("gateway") if isinstance(ip, dict) else None
        if isinstance(gateway, str) and gateway:
            try:
                version, value = parse_ip(gateway)
            except ValueError:
                continue
            gateways.setdefault(version == 4 or value >> 32 == 0xFFFF, gateway)
    filled = []
    for route in routes:
        if isinstance(route, dict) and not route.get("gw") and isinstance(route.get("dst"), str):
            try:
                is_ipv4 = parse_cidr(route["dst"]).is_ipv4()
            except ValueError:
                is_ipv4 = None
            if is_ipv4 is not None and is_ipv4 in gateways:
                route = {**route, "gw": gateways[is_ipv4]}
        filled.append(route)
    return {**prev_result, "routes": filled}
