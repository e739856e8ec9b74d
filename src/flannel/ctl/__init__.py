"""``flannelctl``: the operator's view of a flannel network (issue 14).

One tool that answers "is my fabric healthy, and if not, where and why", built on flanneld's own code: its
flags and environment, its datastore layer, its config validation, its lease guard and its backends' kernel
planes. So what flannelctl reports is what flanneld sees and would do. See docs/flannelctl.md.
"""
