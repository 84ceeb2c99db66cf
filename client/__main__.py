"""``python -m airgap.client`` runs the CLI (the tests use it to run exactly what users run)."""

from airgap.client.entry import main

main()
