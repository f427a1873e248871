"""The long-running processes of a cluster: ``asyncjobs coordinator`` and ``asyncjobs node``."""
