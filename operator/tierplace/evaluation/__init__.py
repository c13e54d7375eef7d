"""The cascade benchmark: tables of every exit, a replay of the router, calibration, the report."""
