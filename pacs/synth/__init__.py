"""Synthetic PACS exports with known ground truth: demo data, test data and the audit benchmark.

``generate_export`` writes procedurally drawn skeletal radiographs (14 regions, artefacts,
label noise, out-of-domain images) as DICOM files plus a truth table; ``render_preview``
writes a contact sheet of what the generator draws.
"""

from radaudit.pacs.synth.anatomy import REGIONS
from radaudit.pacs.synth.export import SynthSummary, generate_export
from radaudit.pacs.synth.preview import render_preview

__all__ = ["REGIONS", "SynthSummary", "generate_export", "render_preview"]
