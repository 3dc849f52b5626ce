"""Realistic header content: people, identifiers, devices and the region strings of a German or
English radiology department (abbreviations, laterality and view words, umlaut variants)."""

from __future__ import annotations

import datetime as dt
import uuid

import numpy as np
from pydicom.uid import UID

SURNAMES = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann",
    "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder", "Neumann", "Schwarz", "Zimmermann",
    "Braun", "Krüger", "Hartmann", "Lange", "Werner", "Krause", "Köhler", "Jäger", "Groß", "Weiß", "Böhm",
    "Öztürk", "Yilmaz", "Kowalski", "Nowak", "Meyer-Lüdenscheidt", "von Arnim", "Smith", "Johnson", "Williams",
    "Brown", "Jones", "Miller", "Davis", "Wilson", "Taylor", "Clark", "O'Brien", "Walker", "Thompson",
)
FIRST_M = ("Hans", "Jürgen", "Klaus", "Stefan", "Michael", "Thomas", "Andreas", "Lukas", "Jonas", "Felix",
           "Maximilian", "Günter", "Karl-Heinz", "Mehmet", "James", "John", "Robert", "David", "William", "Oliver")
FIRST_F = ("Anna", "Ursula", "Monika", "Sabine", "Petra", "Julia", "Lea", "Sophie", "Marie", "Gisela",
           "Hannelore", "Lena", "Zoë", "Ayse", "Mary", "Patricia", "Emily", "Olivia", "Sarah", "Margaret")
PHYSICIANS = ("Dr. med. Keller", "Hausarzt Wagner", "Notaufnahme", "Dr. Brandt", "Unfallchirurgie", "", "Orthopädie")
DEVICES = (  # (manufacturer, model, modality)
    ("Agfa", "CR 85-X", "CR"), ("FUJIFILM Corporation", "FCR Profect CS", "CR"),
    ("Carestream Health", "DRX-Evolution", "DX"), ("Philips Medical Systems", "DigitalDiagnost", "DX"),
    ("SIEMENS", "Ysio Max", "DX"), ("Canon Inc.", "CXDI-710C", "DX"),
    ("KONICA MINOLTA", "REGIUS 190", "CR"),
)
INSTITUTIONS = ("Klinikum Nord", "St. Marien-Hospital", "Radiologie am Markt", "Universitätsklinikum",
                "City General Hospital")

# region -> (German terms, English terms, Body Part Examined code strings (CS: A-Z 0-9 space _))
LEXICON: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "skull": (("Schädel", "Schaedel", "SCHÄDEL", "Sch_del", "Schädel 2 Ebenen"), ("Skull", "SKULL"),
              ("SKULL", "SCHAEDEL", "SCH_DEL")),
    "cervical_spine": (("HWS", "Halswirbelsäule", "Halswirbelsaeule", "HWS seitl."),
                       ("C-Spine", "Cervical spine"), ("CSPINE", "HWS")),
    "thoracic_spine": (("BWS", "Brustwirbelsäule", "Brustwirbelsaeule"), ("T-Spine", "Thoracic spine"),
                       ("TSPINE", "BWS")),
    "lumbar_spine": (("LWS", "Lendenwirbelsäule", "Lendenwirbelsaeule"), ("L-Spine", "Lumbar spine"),
                     ("LSPINE", "LWS")),
    "chest": (("Thorax", "Thorax p.a.", "Thorax pa/seitl.", "Lunge"), ("Chest", "CHEST PA"), ("CHEST", "THORAX")),
    "clavicle": (("Clavicula", "Klavikula", "Schlüsselbein", "Schluesselbein"), ("Clavicle",),
                 ("CLAVICLE", "CLAVICULA")),
    "shoulder": (("Schulter", "Schultergelenk", "SCHULTER"), ("Shoulder",), ("SHOULDER", "SCHULTER")),
    "elbow": (("Ellenbogen", "Ellbogen", "Ellenbogengelenk"), ("Elbow",), ("ELBOW", "ELLENBOGEN")),
    "hand": (("Hand", "Handgelenk", "Hand d.p."), ("Hand", "HAND PA"), ("HAND",)),
    "pelvis": (("Becken", "Beckenübersicht", "Beckenuebersicht", "BECKEN"), ("Pelvis",), ("PELVIS", "BECKEN")),
    "hip": (("Hüfte", "Huefte", "HÜFTE", "h_fte", "Hüftgelenk", "huefte"), ("Hip",), ("HIP", "HUEFTE", "H_FTE")),
    "knee": (("Knie", "Kniegelenk", "KNIE"), ("Knee",), ("KNEE", "KNIE")),
    "ankle": (("OSG", "oberes Sprunggelenk", "Sprunggelenk"), ("Ankle",), ("ANKLE", "OSG", "SPRUNGGELENK")),
    "foot": (("Fuß", "Fuss", "FUSS", "Vorfuß", "Vorfuss"), ("Foot",), ("FOOT", "FUSS")),
}
# Strings that name no region: a label that maps to nothing is a missing label.
UNMAPPABLE = ("Röntgen", "Aufnahme", "unbekannt", "Roentgen", "Nachkontrolle", "Konventionelle Radiologie",
              "Skelett", "Notfall", "Kontrolle", "Unfall", "unknown", "Radiography", "XR", "Rö", "see report")
UNMAPPABLE_CS = ("", "", "", "UNKNOWN", "XRAY", "OTHER", "SKELETT")
SIDE_WORDS_DE = {"L": ("li", "li.", "links", "LI", "L"), "R": ("re", "re.", "rechts", "RE", "R")}
SIDE_WORDS_EN = {"L": ("left", "L", "LT", "Lt"), "R": ("right", "R", "RT", "Rt")}
VIEW_WORDS_DE = ("a.p.", "p.a.", "seitl.", "2 Ebenen", "in 2 Ebenen", "ap/seitl.", "d.p.", "schräg", "axial", "stehend")
VIEW_WORDS_EN = ("AP", "PA", "LAT", "2 views", "AP/LAT", "obl")


def uid(seed: int, *parts: object) -> UID:
    """Deterministic valid UID from the seed and what it identifies.

    A name-based UUID as ``2.25.<int>`` (ISO/IEC 9834-8); pydicom's ``generate_uid(prefix=None)``
    ignores its entropy sources and would be random.
    """
    name = "/".join(["radaudit-synth", str(seed), *map(str, parts)])
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}")


def pick(rng: np.random.Generator, seq: tuple[str, ...] | list[str]) -> str:
    """Uniform choice from a sequence of strings."""
    return seq[int(rng.integers(len(seq)))]


def person(rng: np.random.Generator) -> dict[str, str]:
    """A fake patient: DICOM PN name, ID in one of several site formats, birth date, sex."""
    sex = "M" if rng.random() < 0.5 else "F"
    first = pick(rng, FIRST_M if sex == "M" else FIRST_F)
    last = pick(rng, SURNAMES)
    name = f"{last}^{first}"
    if rng.random() < 0.15:
        name += f"^{pick(rng, FIRST_M if sex == 'M' else FIRST_F)}"
    if rng.random() < 0.05:
        name = f"{last}^{first}^^Dr."
    fmt = int(rng.integers(4))
    num = int(rng.integers(10**5, 10**8))
    pid = (f"{num:08d}", f"PID{num % 10**6:06d}", f"KH-{rng.integers(2005, 2024)}-{num % 10**5:05d}", f"{num}")[fmt]
    birth = dt.date(1930, 1, 1) + dt.timedelta(days=int(rng.integers(0, 85 * 365)))
    return {"name": name, "id": pid, "birth": birth.strftime("%Y%m%d"), "sex": sex}


def region_string(region: str, rng: np.random.Generator, side: str | None, *, english: bool) -> str:
    """A free-text description of ``region``: term plus optional laterality and view words."""
    de, en, _ = LEXICON[region]
    term = pick(rng, en if english else de)
    parts = [term]
    if side is not None and rng.random() < 0.7:
        lat = pick(rng, (SIDE_WORDS_EN if english else SIDE_WORDS_DE)[side])
        parts.insert(0, lat) if rng.random() < 0.25 else parts.append(lat)
    if rng.random() < 0.5:
        parts.append(pick(rng, VIEW_WORDS_EN if english else VIEW_WORDS_DE))
    text = " ".join(parts)
    if rng.random() < 0.1:
        text = ("Rö " if not english else "XR ") + text
    if rng.random() < 0.15:
        text = text.upper()
    return text[:64]


def body_part(region: str, rng: np.random.Generator) -> str:
    """A Body Part Examined value for ``region`` (CS: upper case, 16 characters at most)."""
    return pick(rng, LEXICON[region][2])


def unmappable(rng: np.random.Generator, cs: bool = False) -> str:
    """A blank or a string that names no region."""
    return pick(rng, UNMAPPABLE_CS) if cs else ("" if rng.random() < 0.4 else pick(rng, UNMAPPABLE))


def study_datetime(rng: np.random.Generator) -> dt.datetime:
    """A plausible acquisition time in working hours, 2015 to 2024."""
    day = dt.date(2015, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3650)))
    return dt.datetime(day.year, day.month, day.day, int(rng.integers(7, 20)), int(rng.integers(60)),
                       int(rng.integers(60)))


def accession(rng: np.random.Generator, when: dt.datetime) -> str:
    """An accession number in one of a few RIS formats."""
    n = int(rng.integers(10**6, 10**7))
    return (f"A{when:%y}{n:07d}", f"{when:%Y}{n:07d}"[:16], f"RAD{n}")[int(rng.integers(3))]
