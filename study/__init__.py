"""flowctl: train flow-matching models and manage the experiments around them."""

__version__ = "0.1.0"
