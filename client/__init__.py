"""The sender's and receiver's side of airgap: the CLI, send, fetch and the transports."""
