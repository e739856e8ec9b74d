"""``flannel.tls_memory.client_context``: server names encoded as ``ssl`` does, without loading the idna codec for
an ASCII name (issue #16)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flannel.tls_memory import ascii_server_name


@pytest.mark.parametrize("name", ["127.0.0.1", "kubernetes.default.svc", "API.Example.", "", "a" * 63, "x." + "b" * 63,
                                  "a..b", ".a", "a" * 64 + ".x", "::1"])
def test_an_ascii_name_comes_out_as_the_idna_codec_gives_it(name: str) -> None:
    try:
        expected: str | type[Exception] = name.encode("idna").decode("ascii")
    except UnicodeError:
        expected = UnicodeError
    if expected is UnicodeError:
        with pytest.raises(UnicodeError):
            ascii_server_name(name)
    else:
        assert ascii_server_name(name) == expected


def test_the_context_verifies_and_loads_no_idna_for_ascii_names_only() -> None:
    probe = ("import sys, ssl; from flannel.tls_memory import client_context; ctx = client_context();"
             "assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname;"
             "names = [ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=n).server_hostname"
             "         for n in sys.argv[1:]];"
             "print(*names, 'encodings.idna' in sys.modules)")
    ascii_only = subprocess.run([sys.executable, "-c", probe, "127.0.0.1", "api.example"], capture_output=True,
                                text=True, timeout=30, check=True)
    assert ascii_only.stdout.split() == ["127.0.0.1", "api.example", "False"]
    other = subprocess.run([sys.executable, "-c", probe, "bücher.example"], capture_output=True, text=True,
                           timeout=30, check=True)
    assert other.stdout.split() == ["xn--bcher-kva.example", "True"]
