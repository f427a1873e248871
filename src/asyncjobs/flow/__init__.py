"""jobs.yaml: loading, validation, templates and planning. Pure: no IO but reading files."""
