"""Tests for radaudit.pacs.regions: raw PACS strings -> region vocabulary.

Run: python -m pytest tests/pacs/test_regions.py -q
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from radaudit.pacs.regions import (
    DEFAULT_REGIONS,
    TAG_PRIORITY,
    RegionLabel,
    RegionMapper,
    RegionMappingError,
    normalize,
)


@pytest.fixture(scope="module")
def mapper() -> RegionMapper:
    return RegionMapper.from_file()


# (raw string, expected region or None)
CASES: list[tuple[str | None, str | None]] = [
    # --- skull: skull, facial bones, sinuses
    ("Schädel", "skull"),
    ("SCHÄDEL AP/SEITL", "skull"),
    ("Schädel in 2 Ebenen", "skull"),
    ("schaedel", "skull"),
    ("SCHAEDEL p.a.", "skull"),
    ("SCH_DEL", "skull"),
    ("Sch?del seitl.", "skull"),
    ("SchÃ¤del", "skull"),
    ("Schädelübersicht", "skull"),
    ("SKULL", "skull"),
    ("XR SKULL 4+ VW", "skull"),
    ("HEAD", "skull"),
    ("Kopf", "skull"),
    ("NNH", "skull"),
    ("NNH okzipitomental", "skull"),
    ("Nasennebenhöhlen", "skull"),
    ("XR SINUSES", "skull"),
    ("Gesichtsschädel", "skull"),
    ("Mittelgesicht", "skull"),
    ("Unterkiefer li", "skull"),
    ("MANDIBLE", "skull"),
    ("Orbita bds.", "skull"),
    ("Nasenbein seitl", "skull"),
    ("XR FACIAL BONES", "skull"),
    ("JAW", "skull"),
    ("OPG", "skull"),
    ("Jochbogen axial", "skull"),
    # --- cervical spine
    ("HWS", "cervical_spine"),
    ("HWS ap+seitl", "cervical_spine"),
    ("HWS in 2 Ebenen", "cervical_spine"),
    ("hws funktionsaufnahme", "cervical_spine"),
    ("HWS_2E", "cervical_spine"),
    ("Halswirbelsäule", "cervical_spine"),
    ("HALSWIRBELSAEULE", "cervical_spine"),
    ("Halswirbels?ule lat", "cervical_spine"),
    ("C-Spine", "cervical_spine"),
    ("CSPINE", "cervical_spine"),
    ("XR SPINE CERVICAL 2-3 VW", "cervical_spine"),
    ("Dens", "cervical_spine"),
    ("Densaufnahme", "cervical_spine"),
    # --- thoracic spine
    ("BWS", "thoracic_spine"),
    ("BWS a.p. + seitl.", "thoracic_spine"),
    ("Brustwirbelsäule", "thoracic_spine"),
    ("BRUSTWIRBELSÄULE 2 E.", "thoracic_spine"),
    ("TSPINE", "thoracic_spine"),
    ("T-Spine AP", "thoracic_spine"),
    ("Thoracic spine lateral", "thoracic_spine"),
    ("XR SPINE THORACIC 2 VW", "thoracic_spine"),
    # --- lumbar spine
    ("LWS", "lumbar_spine"),
    ("LWS stehend", "lumbar_spine"),
    ("LWS ap+seitl liegend", "lumbar_spine"),
    ("Lendenwirbelsäule", "lumbar_spine"),
    ("LENDENWIRBELSAEULE", "lumbar_spine"),
    ("L-Spine", "lumbar_spine"),
    ("LSPINE", "lumbar_spine"),
    ("LSSPINE", "lumbar_spine"),
    ("LS-Übergang", "lumbar_spine"),
    ("LS-Uebergang seitl.", "lumbar_spine"),
    ("XR SPINE LUMBAR 2-3 VW", "lumbar_spine"),
    ("LWS Funktion", "lumbar_spine"),
    # --- chest, ribs, sternum
    ("Thorax", "chest"),
    ("Thorax pa", "chest"),
    ("Thorax p.a. + seitl.", "chest"),
    ("THORAX LIEGEND", "chest"),
    ("Thorax im Liegen", "chest"),
    ("Thx", "chest"),
    ("Thoraxübersicht", "chest"),
    ("CHEST", "chest"),
    ("XR CHEST PA AND LAT", "chest"),
    ("Chest 1 view", "chest"),
    ("Rippen re", "chest"),
    ("Rippenserie links", "chest"),
    ("RIBS", "chest"),
    ("Sternum seitl.", "chest"),
    ("Thorax/Rippen", "chest"),
    ("Lunge pa", "chest"),
    # --- clavicle
    ("Clavicula li", "clavicle"),
    ("CLAVICULA RE.", "clavicle"),
    ("Klavikula", "clavicle"),
    ("Schlüsselbein rechts", "clavicle"),
    ("SCHLUESSELBEIN", "clavicle"),
    ("CLAVICLE", "clavicle"),
    ("SC-Gelenk", "clavicle"),
    # --- shoulder
    ("Schulter", "shoulder"),
    ("Schulter re true ap", "shoulder"),
    ("SCHULTER LI Y-Aufnahme", "shoulder"),
    ("Schultergelenk axial", "shoulder"),
    ("SHOULDER", "shoulder"),
    ("XR SHOULDER COMPLETE 2+ VW", "shoulder"),
    ("AC-Gelenk", "shoulder"),
    ("AC-Gelenk bds. mit Belastung", "shoulder"),
    ("ACJOINT", "shoulder"),
    ("Scapula", "shoulder"),
    ("Humeruskopf", "shoulder"),
    # --- elbow
    ("Ellenbogen", "elbow"),
    ("Ellenbogen li 2 Ebenen", "elbow"),
    ("Ellbogen re", "elbow"),
    ("ELLBG", "elbow"),
    ("ELLBG LI", "elbow"),
    ("ELBOW", "elbow"),
    ("Elbow AP/LAT", "elbow"),
    ("Radiuskopf", "elbow"),
    # --- hand, wrist, fingers
    ("Hand", "hand"),
    ("Hand dv + schräg", "hand"),
    ("HAND RE 2E", "hand"),
    ("Handgelenk li", "hand"),
    ("HANDGELENK", "hand"),
    ("HG re", "hand"),
    ("HG li. 2 Ebenen", "hand"),
    ("Finger", "hand"),
    ("Finger III re", "hand"),
    ("Daumen li", "hand"),
    ("Kahnbein", "hand"),
    ("Kahnbeinquartett", "hand"),
    ("Scaphoid", "hand"),
    ("WRIST", "hand"),
    ("Wrist PA/LAT", "hand"),
    ("FINGER", "hand"),
    ("HAND", "hand"),
    ("Mittelhand", "hand"),
    ("XR FINGER(S) 2+ VW", "hand"),
    ("Hände bds.", "hand"),
    # --- pelvis, sacrum, SI joints
    ("Becken", "pelvis"),
    ("Becken a.p.", "pelvis"),
    ("Beckenübersicht", "pelvis"),
    ("BECKENUEBERSICHT", "pelvis"),
    ("Becken?bersicht", "pelvis"),
    ("PELVIS", "pelvis"),
    ("XR PELVIS 1-2 VW", "pelvis"),
    ("ISG", "pelvis"),
    ("ISG bds.", "pelvis"),
    ("SSPINE", "pelvis"),
    ("SACRUM", "pelvis"),
    ("Os sacrum seitl", "pelvis"),
    ("Steißbein", "pelvis"),
    ("COCCYX", "pelvis"),
    ("XR SI JOINTS", "pelvis"),
    ("Symphyse", "pelvis"),
    # --- hip
    ("Hüfte", "hip"),
    ("Hüfte li axial", "hip"),
    ("HÜFTE", "hip"),
    ("huefte re", "hip"),
    ("HUEFTE LI", "hip"),
    ("h_fte", "hip"),
    ("H?FTE", "hip"),
    ("HFTE", "hip"),
    ("HÃœFTE", "hip"),
    ("HÃ¼fte links", "hip"),
    ("H\ufffdfte", "hip"),
    ("Hüftgelenk", "hip"),
    ("Hüftgelenk re. Lauenstein", "hip"),
    ("HIP", "hip"),
    ("Hip left", "hip"),
    ("Schenkelhals", "hip"),
    ("Femoral neck", "hip"),
    ("Hüfte nach Lauenstein", "hip"),
    ("Femur mit Hüfte", "hip"),
    # --- knee
    ("Knie", "knee"),
    ("Knie ap+seitl li", "knee"),
    ("KNIE LI 2 EBENEN", "knee"),
    ("Knie re. stehend", "knee"),
    ("KNIE_LI", "knee"),
    ("Kniegelenk", "knee"),
    ("Patella axial", "knee"),
    ("KNEE", "knee"),
    ("XR KNEE 3 VIEWS LEFT", "knee"),
    ("Knee bilateral standing", "knee"),
    ("Oberschenkel mit Kniegelenk", "knee"),
    # --- ankle
    ("OSG", "ankle"),
    ("OSG re 2E", "ankle"),
    ("OSG li. a.p. + seitl.", "ankle"),
    ("Sprunggelenk links", "ankle"),
    ("oberes Sprunggelenk", "ankle"),
    ("Knöchel", "ankle"),
    ("KNOECHEL RE", "ankle"),
    ("ANKLE", "ankle"),
    ("Ankle AP/LAT/Mortise", "ankle"),
    ("Unterschenkel mit OSG", "ankle"),
    ("Fußgelenk re", "ankle"),
    # --- foot, calcaneus, toes
    ("Fuß", "foot"),
    ("Fuß dp + schräg", "foot"),
    ("Fuss re", "foot"),
    ("FUSS LI", "foot"),
    ("Fu?", "foot"),
    ("FU?", "foot"),
    ("FuÃŸ", "foot"),
    ("Vorfuß", "foot"),
    ("Vorfuss li", "foot"),
    ("Calcaneus axial", "foot"),
    ("Kalkaneus seitl", "foot"),
    ("Ferse", "foot"),
    ("Zehe I li", "foot"),
    ("Großzehe", "foot"),
    ("FOOT", "foot"),
    ("TOE", "foot"),
    ("XR FOOT COMPLETE 3+ VW", "foot"),
    ("unteres Sprunggelenk", "foot"),
    # --- long bones: not in the default vocabulary
    ("Oberschenkel", None),
    ("Femur", None),
    ("FEMUR", None),
    ("Unterschenkel", None),
    ("Unterschenkel re 2 Ebenen", None),
    ("Tibia/Fibula", None),
    ("Humerus", None),
    ("Oberarm li", None),
    ("Unterarm", None),
    ("Forearm", None),
    ("XR FOREARM 2 VW", None),
    ("LEG", None),
    ("ARM", None),
    # --- ambiguous: two classes named
    ("Hand und Fuß", None),
    ("HWS/BWS", None),
    ("BWS/LWS", None),
    ("LWS/ISG", None),
    ("Thorax + BWS", None),
    ("Knie und Hüfte", None),
    ("XR HIP W PELVIS 2-3 VW", None),
    ("Unterschenkel mit Knie und OSG", None),
    # --- multi-region and non-skeletal
    ("Skelett", None),
    ("Skelettstatus", None),
    ("Ganzkörper", None),
    ("GANZKOERPER", None),
    ("Ganzbeinstandaufnahme", None),
    ("Wirbelsäule ganz", None),
    ("WHOLESPINE", None),
    ("Wirbelsäule", None),
    ("Abdomen", None),
    ("ABDOMEN", None),
    ("BREAST", None),
    # --- blanks and noise
    ("Test", None),
    ("unknown", None),
    ("ANDERE", None),
    ("OTHER", None),
    ("", None),
    ("   ", None),
    ("---", None),
    ("li", None),
    ("a.p. seitl.", None),
    ("XR", None),
    ("Aufnahme 1", None),
    ("Serie 3", None),
    (None, None),
]


@pytest.mark.parametrize(("raw", "expected"), CASES, ids=[repr(r) for r, _ in CASES])
def test_map_string(mapper: RegionMapper, raw: str | None, expected: str | None) -> None:
    assert mapper.map_string(raw) == expected, mapper.explain(raw).reason


def test_case_table_is_large_and_covers_every_region() -> None:
    assert len(CASES) >= 200
    assert {e for _, e in CASES if e} == set(DEFAULT_REGIONS)


def test_default_vocabulary(mapper: RegionMapper) -> None:
    assert mapper.regions == DEFAULT_REGIONS


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("HÃœFTE li. 2 E.", "huefte li 2 e"),
        ("FuÃŸ", "fuss"),
        ("Fuß", "fuss"),
        ("H?FTE", "h_fte"),
        ("Hu\u0308fte", "huefte"),  # decomposed umlaut
        ("KNIE_LI", "knie_li"),
        ("Knie2E", "knie 2 e"),
        ("  a.p.  ", "a p"),
        ("Hüfte", "huefte"),
    ],
)
def test_normalize(raw: str, normal: str) -> None:
    assert normalize(raw) == normal


def test_explain_names_both_regions_when_ambiguous(mapper: RegionMapper) -> None:
    match = mapper.explain("Hand und Fuß")
    assert match.region is None
    assert "ambiguous" in match.reason and "hand" in match.reason and "foot" in match.reason


def test_explain_long_bone_and_unknown(mapper: RegionMapper) -> None:
    assert "not in the vocabulary" in mapper.explain("Oberschenkel").reason
    assert "xyz" in mapper.explain("xyz li").reason
    assert mapper.explain("Unterschenkel mit OSG").terms == ("osg",)


# --- tag priority


def test_body_part_examined_wins(mapper: RegionMapper) -> None:
    tags = {
        "body_part_examined": "KNEE",
        "series_description": "Hüfte",
        "study_description": "Thorax",
    }
    assert mapper.map_tags(tags) == RegionLabel("knee", "KNEE", "body_part_examined")


def test_priority_order_is_bpe_series_study_protocol(mapper: RegionMapper) -> None:
    tags = {"protocol_name": "Knie", "study_description": "Hüfte", "series_description": "Thorax"}
    assert mapper.map_tags(tags) == RegionLabel("chest", "Thorax", "series_description")
    assert TAG_PRIORITY == (
        "body_part_examined",
        "series_description",
        "study_description",
        "protocol_name",
    )


def test_unmapped_and_ambiguous_tags_fall_through(mapper: RegionMapper) -> None:
    tags = {
        "body_part_examined": "OTHER",
        "series_description": "HWS/BWS",
        "study_description": None,
        "protocol_name": "OSG re",
    }
    assert mapper.map_tags(tags) == RegionLabel("ankle", "OSG re", "protocol_name")


def test_nothing_maps_reports_first_nonempty_tag(mapper: RegionMapper) -> None:
    tags = {"body_part_examined": "  ", "series_description": "Femur", "protocol_name": "Test"}
    assert mapper.map_tags(tags) == RegionLabel(None, "Femur", "series_description")


def test_all_tags_empty(mapper: RegionMapper) -> None:
    assert mapper.map_tags({}) == RegionLabel(None, None, None)
    assert mapper.map_tags({"body_part_examined": None, "series_description": ""}) == RegionLabel(
        None, None, None
    )


def test_nan_tag_is_empty(mapper: RegionMapper) -> None:
    tags = {"body_part_examined": math.nan, "series_description": "Becken"}  # type: ignore[dict-item]
    assert mapper.map_tags(tags) == RegionLabel("pelvis", "Becken", "series_description")


# --- label_frame


def test_label_frame_matches_map_tags(mapper: RegionMapper) -> None:
    index = pd.DataFrame(
        {
            "sop_instance_uid": ["1.1", "1.2", "1.3", "1.4", "1.5", "1.6"],
            "body_part_examined": ["KNEE", None, "OTHER", "", None, "HAND"],
            "series_description": ["Hüfte", "LWS ap", "HWS/BWS", None, None, "Hand und Fuß"],
            "study_description": ["Thorax", "Thorax", "Femur", None, None, None],
            "protocol_name": [None, None, "OSG re", "Skelett", None, None],
        },
        index=[10, 11, 12, 13, 14, 15],
    )
    out = mapper.label_frame(index)
    assert list(out.columns) == [
        "sop_instance_uid",
        "recorded_region",
        "recorded_raw",
        "recorded_tag",
    ]
    assert list(out.index) == [10, 11, 12, 13, 14, 15]
    assert out["recorded_region"].tolist() == ["knee", "lumbar_spine", "ankle", None, None, "hand"]
    assert out["recorded_raw"].tolist() == ["KNEE", "LWS ap", "OSG re", "Skelett", None, "HAND"]
    assert out["recorded_tag"].tolist() == [
        "body_part_examined",
        "series_description",
        "protocol_name",
        "protocol_name",
        None,
        "body_part_examined",
    ]
    got = list(zip(out["recorded_region"], out["recorded_raw"], out["recorded_tag"], strict=True))
    for i, row in enumerate(index.to_dict("records")):
        expected = mapper.map_tags({k: row[k] for k in TAG_PRIORITY})
        assert got[i] == (expected.region, expected.raw, expected.tag)


def test_label_frame_missing_columns_and_reason(mapper: RegionMapper) -> None:
    index = pd.DataFrame(
        {
            "sop_instance_uid": ["a", "b"],
            "series_description": pd.array(["Knie li", "Oberarm"], dtype="string"),
        }
    )
    out = mapper.label_frame(index, with_reason=True)
    assert out["recorded_region"].tolist() == ["knee", None]
    assert out["recorded_tag"].tolist() == ["series_description", "series_description"]
    assert "not in the vocabulary" in out["recorded_reason"].iloc[1]


def test_label_frame_empty_and_missing_uid(mapper: RegionMapper) -> None:
    empty = pd.DataFrame(
        {"sop_instance_uid": pd.Series([], dtype=object), "body_part_examined": []}
    )
    assert len(mapper.label_frame(empty)) == 0
    with pytest.raises(ValueError, match="sop_instance_uid"):
        mapper.label_frame(pd.DataFrame({"body_part_examined": ["KNEE"]}))


def test_label_frame_repeated_strings(mapper: RegionMapper) -> None:
    index = pd.DataFrame(
        {
            "sop_instance_uid": [str(i) for i in range(300)],
            "body_part_examined": ["KNEE", None, "Fuß"] * 100,
            "series_description": ["x", "BWS", "y"] * 100,
        }
    )
    out = mapper.label_frame(index)
    assert out["recorded_region"].tolist() == ["knee", "thoracic_spine", "foot"] * 100


# --- custom mapping files

FEMUR_TOML = """
[ignore]
terms = ["li", "re", "mit"]

[other_anatomy]
terms = ["unterschenkel*"]

[regions.hip]
terms = ["hüft*", "hip"]

[regions.femur]
terms = ["femur*", "oberschenkel*"]
secondary = true

[regions.knee]
terms = ["knie*"]
"""


def test_custom_file_adds_femur(tmp_path: Path) -> None:
    path = tmp_path / "regions.toml"
    path.write_text(FEMUR_TOML, encoding="utf-8")
    mapper = RegionMapper.from_file(path)
    assert mapper.regions == ("hip", "femur", "knee")
    assert mapper.map_string("Femur li") == "femur"
    assert mapper.map_string("OBERSCHENKEL re") == "femur"
    assert mapper.map_string("Femur mit Hüfte") == "hip"  # secondary yields to a joint
    assert mapper.map_string("Oberschenkel mit Knie") == "knee"
    assert mapper.map_string("Unterschenkel") is None
    assert mapper.map_string("Thorax") is None  # not in this vocabulary


def test_secondary_regions_still_ambiguous_among_themselves(tmp_path: Path) -> None:
    path = tmp_path / "regions.toml"
    path.write_text(
        FEMUR_TOML + '\n[regions.lower_leg]\nterms = ["tibia"]\nsecondary = true\n',
        encoding="utf-8",
    )
    path.write_text(
        path.read_text().replace('terms = ["unterschenkel*"]', "terms = []"), encoding="utf-8"
    )
    mapper = RegionMapper.from_file(path)
    assert mapper.map_string("Femur und Tibia") is None


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "regions.yaml"
    path.write_text(
        "regions:\n"
        "  hand:\n    terms: [hand*, HG]\n"
        "  foot:\n    terms: ['fuß*']\n    patterns: ['(?<![a-z])pes(?![a-z])']\n",
        encoding="utf-8",
    )
    mapper = RegionMapper.from_file(path)
    assert mapper.regions == ("hand", "foot")
    assert mapper.map_string("HG re") == "hand"
    assert mapper.map_string("Pes planus") == "foot"
    assert mapper.map_string("FUSS") == "foot"


def test_default_file_plus_femur_asks_to_remove_it_from_other_anatomy(tmp_path: Path) -> None:
    default = Path(__file__).parents[2] / "pacs" / "regions.toml"
    path = tmp_path / "mine.toml"
    path.write_text(
        default.read_text(encoding="utf-8") + '\n[regions.femur]\nterms = ["femur*"]\n',
        encoding="utf-8",
    )
    with pytest.raises(
        RegionMappingError, match=r"mine\.toml.*'femur\*'.*other_anatomy.*regions\.femur"
    ):
        RegionMapper.from_file(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[regions.hip]\nterms = ["Hüfte"]\n[regions.pelvis]\nterms = ["huefte"]\n',
            r"bad\.toml.*'huefte'.*\[regions\.hip\] and \[regions\.pelvis\]",
        ),
        (
            '[regions.hip]\nterms = ["hip"]\n[ignore]\nterms = ["hip"]\n',
            r"bad\.toml.*'hip'.*ignore",
        ),
        ("[regions.hip]\nterms = []\n", r"bad\.toml.*\[regions\.hip\] is empty"),
        ("[regions.hip]\n", r"bad\.toml.*\[regions\.hip\] is empty"),
        (
            '[regions.hip]\nterms = ["hip"]\nsynonyms = ["x"]\n',
            r"bad\.toml.*regions\.hip.*unknown key 'synonyms'",
        ),
        ('colours = 1\n[regions.hip]\nterms = ["hip"]\n', r"bad\.toml.*unknown key 'colours'"),
        ('[regions.hip]\nterms = "hip"\n', r"bad\.toml.*regions\.hip.*list of strings"),
        ('[regions.hip]\npatterns = ["(unclosed"]\n', r"bad\.toml.*regions\.hip.*'\(unclosed'"),
        ('[regions.Hip]\nterms = ["hip"]\n', r"bad\.toml.*region name 'Hip'"),
        ('[regions.hip]\nterms = ["--"]\n', r"bad\.toml.*'--'"),
        ('[regions.hip]\nterms = ["hip"]\nsecondary = "yes"\n', r"bad\.toml.*secondary"),
        ("[ignore]\nterms = ['li']\n", r"bad\.toml.*\[regions\] is missing"),
        ("[regions.hip\n", r"bad\.toml.*not valid TOML"),
    ],
)
def test_invalid_files_are_rejected(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RegionMappingError, match=message):
        RegionMapper.from_file(path)


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RegionMappingError, match=r"\.json"):
        RegionMapper.from_file(tmp_path / "regions.json")
    with pytest.raises(RegionMappingError, match="cannot read"):
        RegionMapper.from_file(tmp_path / "missing.toml")


def test_mapping_error_is_a_value_error() -> None:
    assert issubclass(RegionMappingError, ValueError)
