"""A minimal asyncio Kubernetes API client for ``--kube-subnet-mgr``.

Written on asyncio streams, ``ssl`` and ``json`` rather than on lightkube/httpx: flanneld must stay under
50 MiB while watching thousands of nodes, and those libraries cost about 12 MiB before the first request.
Only what flannel uses is here: nodes (get, paginated list, watch, status patch) and pods (get).
"""
