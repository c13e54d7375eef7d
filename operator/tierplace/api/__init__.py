"""Shared vocabulary with no I/O: tiers, variants, labels, CRD models and conditions."""
