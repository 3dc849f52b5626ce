"""Thin Dagster assets over the ``pacs``, ``augment`` and ``models`` libraries."""
