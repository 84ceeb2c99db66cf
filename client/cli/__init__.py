"""The ``airgap`` command line (``airgap.client.cli:main``, which ``airgap.client.entry`` runs).

Importing the command modules registers their commands on the one typer app.
"""

from airgap.client.cli import keys, ledger, server, spool, transfer  # noqa: F401  (register commands)
from airgap.client.cli.app import app, main, reflow_help

reflow_help(app)

__all__ = ["app", "main"]
