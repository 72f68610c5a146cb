"""Tally: self-hosted, person-centric product analytics that speaks the KISSmetrics API."""

__version__ = "0.1.0"
