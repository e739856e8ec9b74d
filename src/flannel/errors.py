"""Domain errors, raised where they arise.

One small tree so that callers can catch intent (a bad config, a bad lease record) rather than library
exceptions. ``str(err)`` is the user-facing text; for errors that upstream also reports, it is upstream's text.
"""

from __future__ import annotations


class FlannelError(Exception):
    """Base of every error flannel raises on purpose."""


class ConfigError(FlannelError):
    """A configuration value is wrong. ``field`` names the key at fault (empty when it is the whole document)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class LeaseDecodeError(FlannelError):
    """A lease key or value in the datastore could not be decoded; the lease is skipped, never fatal."""


class OutOfSubnetsError(FlannelError):
    """No free subnet is left in the configured range."""


class DatastoreUnavailableError(FlannelError):
    """The datastore could not be reached; callers retry with back-off."""


class LeaseRevokedError(FlannelError):
    """This node's own lease disappeared from the datastore and could not be re-acquired."""


class LeaseLostError(LeaseRevokedError):
    """This node's subnet went to another node while its own lease could not be renewed: stop using it."""
