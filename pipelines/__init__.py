"""radaudit's Dagster code location: definitions, jobs, resources and the ``radaudit`` CLI."""
