"""Traffic rules (spec §11): masquerading and FORWARD accept rules, with iptables or nftables.

flanneld owns a few named things in the host firewall and keeps each exactly as the current config wants:

* iptables mode: the chains ``FLANNEL-POSTRTG`` (nat) and ``FLANNEL-FWD`` (filter) of ``iptables`` and
  ``ip6tables``, each with one jump from ``POSTROUTING`` / ``FORWARD``;
* nftables mode (``EnableNFTables``): the tables ``ip flannel-ipv4`` and ``ip6 flannel-ipv6``.

Each owned chain (iptables) or table (nftables) is rewritten whole in one atomic transaction, as Calico's felix
does, so a restart, a changed lease or a hand edit never leaves half a rule set or a duplicate behind. The
keeper (``keeper.py``) removes the other mode's state at start, installs the rules before ``subnet.env`` is
written, and repairs drift every ``--iptables-resync`` seconds. Nothing is torn down on exit.
"""
