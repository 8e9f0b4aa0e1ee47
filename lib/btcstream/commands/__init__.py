"""Sub-commands of the `btcstream` CLI, one module each (see btcstream.cli)."""
