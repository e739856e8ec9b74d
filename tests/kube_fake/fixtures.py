"""pytest fixtures for the fake API server; import them into a test module to use them::

    from tests.kube_fake.fixtures import fake_api_fixture, kube_tls_fixture  # noqa: F401

and request them as ``fake_api`` and ``kube_tls``.
Each fixture that starts a server also stops it, and fails the test if the fake hit a bug of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.kube_fake.server import FakeKubeApi
from tests.kube_fake.tls import TlsDir, make_tls_dir


@pytest.fixture(name="fake_api")
async def fake_api_fixture() -> AsyncIterator[FakeKubeApi]:
    """A plain-HTTP fake on 127.0.0.1 without authentication, bookmarks every 0.2 s."""
    async with FakeKubeApi(bookmark_interval=0.2) as api:
        yield api
    assert not api.internal_errors, api.internal_errors


@pytest.fixture(name="kube_tls", scope="session")
def kube_tls_fixture(tmp_path_factory: pytest.TempPathFactory) -> TlsDir:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made once per session."""
    return make_tls_dir(Path(tmp_path_factory.mktemp("kube-tls")))
