"""Monitoring tables, run statistics, manifests and model cards in (read only).
The Panel dashboard out (``dashboard``): accuracy, class mix, confusion, failure cases, runs and models."""
