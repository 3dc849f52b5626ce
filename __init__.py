"""radaudit: batch label audit for skeletal radiographs.

The repository's top-level folders are this package's subpackages (``pyproject.toml`` maps
``radaudit`` onto the repository root), so an install adds one name, ``radaudit``, to
site-packages:

- :mod:`radaudit.pacs`: DICOM discovery, headers, pixels, ingest preprocessing, image cache, data-dir layout
- :mod:`radaudit.augment`: radiograph augmentations and the two-view SSL pipeline
- :mod:`radaudit.models`: SSL methods, embeddings, linear heads, ensemble, out-of-domain evidence, audit
- :mod:`radaudit.pipelines`: the stages (file I/O of the data dir), Dagster definitions, jobs and the CLI
- :mod:`radaudit.assets`: thin Dagster assets over the stages

Importing this package imports nothing else.
"""
