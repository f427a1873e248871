"""Runnable examples; a package so jobs.yaml can name ``examples.montecarlo:hits``."""
