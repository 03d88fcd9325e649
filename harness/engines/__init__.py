"""Extraction engines: `base` (the contract and what every engine shares), one module per engine."""
