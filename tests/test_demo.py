"""`make demo` runs the README's one command that shows the main job, for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.docker


def test_demo_sends_fetches_and_runs_an_image(docker_client: Any) -> None:
    airgap = Path(sys.executable).with_name("airgap")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRGAP_")}
    done = subprocess.run(
        ["bash", str(ROOT / "demo" / "demo.sh")],
        env={**env, "AIRGAP": str(airgap)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hello across the air gap" in done.stdout
    assert "fetched" in done.stderr and "Traceback" not in done.stderr
