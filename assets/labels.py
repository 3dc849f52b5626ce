"""Region labels: the recorded region of each instance, mapped from its raw PACS strings."""


import dagster as dg

from radaudit.pacs import io
from radaudit.pacs.index import read_index
from radaudit.pacs.layout import OVERRIDES_PATH, REVIEW_DIR
from radaudit.pacs.regions import RegionMapper
from radaudit.pacs.review import read_reviews, unknown_uid_warnings
from radaudit.pipelines import stages
from radaudit.assets.guard import guarded
from radaudit.assets.resources import RadauditConfig



@dg.asset(
    deps=["dicom_index"], group_name="labels",
    description="Per instance: the raw PACS string used, the tag it came from, and the mapped region or null "
    "(labels/region_labels.parquet). Edit the mapping file to change how strings map.",
)
def region_labels(radaudit: RadauditConfig) -> dg.MaterializeResult:
    """Map Body Part Examined / Series / Study Description / Protocol Name to the vocabulary."""
    with guarded(radaudit, "region_labels"):
        labels = stages.map_labels(radaudit.data_dir, radaudit.region_map)
        counts = labels["recorded_region"].value_counts(dropna=False)
        return dg.MaterializeResult(metadata={
            "dagster/row_count": len(labels),
            "null_labels": int(labels["recorded_region"].isna().sum()),
            "by_region": dg.MetadataValue.json({str(k): int(v) for k, v in counts.items()}),
            "by_tag": dg.MetadataValue.json({str(k): int(v) for k, v in labels["recorded_tag"].value_counts(dropna=False).items()}),
            "vocabulary": ", ".join(stages.read_vocabulary(radaudit.data_dir)),
        })


@dg.asset(
    deps=["dicom_index"], group_name="labels",
    description="Radiologists' verdicts from the report CSVs returned into review/ under the data dir "
    "(labels/label_overrides.parquet): trusted as ground truth by the heads, resolved flags not raised again. "
    "A malformed file fails the run with file, row and column, and nothing is applied.",
)
def label_overrides(context: dg.AssetExecutionContext, radaudit: RadauditConfig) -> dg.MaterializeResult:
    """Read every returned review CSV into one overrides table; warn about verdicts on unknown images."""
    with guarded(radaudit, "label_overrides"):
        mapper = RegionMapper.from_file(radaudit.region_map)
        overrides = read_reviews(radaudit.data_path, mapper.regions)
        known = read_index(radaudit.data_dir)["sop_instance_uid"]
        unknown = unknown_uid_warnings(overrides, known)
        for line in unknown:
            context.log.warning(line)
        io.write_parquet_frame(overrides, radaudit.data_path / OVERRIDES_PATH)
        return dg.MaterializeResult(metadata={
            "dagster/row_count": len(overrides), "review_dir": str(radaudit.data_path / REVIEW_DIR),
            "files_with_unknown_images": len(unknown),
            "by_verdict": dg.MetadataValue.json({str(k): int(v) for k, v in overrides["verdict"].value_counts().items()}),
        })
