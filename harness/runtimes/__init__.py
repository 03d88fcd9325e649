"""Runtimes: what runs a backbone's embedding module. `base` is the contract; one module per runtime."""
