#!/bin/bash
# The kernel's cost of N vxlan peer routes on one device, plain (upstream's layout) against nexthop objects
# (flanneld's default), measured with iproute2 alone so that nothing of flanneld counts (issue #16,
# docs/performance.md "Nexthop objects"). Also N plain IPv6 routes, which do not share the IPv4 hash bucket.
# Run as root: bash bench/nexthop_vs_plain.sh 5000 10000
# Everything happens in one fresh network namespace, deleted at exit; nothing touches the root namespace.
set -euo pipefail
ns="nhbench-$$"
work=$(mktemp -d)
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link add flannel.1 type vxlan id 1 local 198.18.0.1 dstport 8472 nolearning
ip -n "$ns" link add flannel-v6.1 type vxlan id 2 local 2001:db8::1 dstport 8472 nolearning
ip -n "$ns" link set flannel.1 up
ip -n "$ns" link set flannel-v6.1 up
ip -n "$ns" addr add 10.0.0.0/32 dev flannel.1
for n in "${@:-5000}"; do
    [ "$n" -le 65000 ] || { echo "at most 65000 routes (10.0.0.0/8 in /24s from 10.0.1.0)" >&2; exit 2; }
    python3 - "$n" "$work" <<'PY'
import sys
n, work = int(sys.argv[1]), sys.argv[2]
with open(f"{work}/plain", "w") as plain, open(f"{work}/nh", "w") as nh, open(f"{work}/v6", "w") as v6:
    for i in range(1, n + 1):
        a = (10 << 24) | (i << 8)
        gw = f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.0"
        plain.write(f"route replace {gw}/24 via {gw} dev flannel.1 onlink\n")
        nh.write(f"nexthop replace id {a} via {gw} dev flannel.1 onlink\nroute replace {gw}/24 nhid {a}\n")
        g6 = f"fd00:0:{i >> 8:x}:{(i & 255) << 8:x}::"
        v6.write(f"route replace {g6}/64 via {g6} dev flannel-v6.1 onlink\n")
PY
    /usr/bin/time -f "$n plain IPv4 routes: %e s wall, %S s kernel" ip -n "$ns" -batch "$work/plain"
    ip -n "$ns" route flush dev flannel.1
    /usr/bin/time -f "$n nexthop objects + routes: %e s wall, %S s kernel" ip -n "$ns" -batch "$work/nh"
    ip -n "$ns" nexthop flush
    /usr/bin/time -f "$n plain IPv6 routes: %e s wall, %S s kernel" ip -n "$ns" -6 -batch "$work/v6"
    ip -n "$ns" -6 route flush dev flannel-v6.1
done
