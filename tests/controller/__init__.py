"""Operator tests: pure cores, and the control-plane tier (marker ``controlplane``)."""
