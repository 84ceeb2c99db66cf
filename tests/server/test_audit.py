"""The audit log's stderr copy, read as a user of the appliance reads it: one field each."""

from __future__ import annotations

import shlex

import pytest

from tests.server.conftest import stor, wait_for

pytestmark = pytest.mark.timeout(60)


def fields_of(line: str) -> dict[str, str]:
    """``key=value`` pairs of one stderr line (after ``airgap: INFO EVENT``), shell-quoted."""
    words = shlex.split(line.split(" INFO ", 1)[1])
    return dict(word.split("=", 1) for word in words[1:])


def test_a_file_name_cannot_forge_a_field_of_the_stderr_line(serve):
    """Found in review: a file named ``x user=receiver ip=10.9.9.9 event=publish`` made a
    stderr line that read as the receiver's publish from another address."""
    server = serve("--tls", "off")
    name = "x user=receiver ip=10.9.9.9 event=publish"
    stor(server.ftp("sender"), name, b"data")

    def started() -> list[str]:
        return [line for line in server.lines if " INFO upload-started " in line]

    assert wait_for(started)
    fields = fields_of(started()[0])
    assert fields == {
        "file": f"pub/incoming/sender/{name}",
        "ip": "127.0.0.1",
        "offset": "0",
        "user": "sender",
    }
    assert "user=sender" in started()[0]  # plain values stay as they were


def test_an_event_without_fields_ends_its_line(serve):
    """Found in a walkthrough: `airgap: INFO stop ` kept a trailing space."""
    server = serve("--tls", "off")
    assert server.stop() == 0
    assert "airgap: INFO stop\n" in server.stderr
