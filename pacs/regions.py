"""Map raw PACS strings (Body Part Examined, descriptions, protocol names) to the region vocabulary.

The mapping is a user-editable file (``pacs/regions.toml`` by default, or a YAML file of the
same shape) that lists, per region, whole-word terms with ``*`` globs and optional regular
expressions; the file's header comment states the matching rules. Matching is token/regex
based, never fuzzy, so every label can be explained by the term that produced it
(``RegionMapper.explain``).

Run the tests with::

    python -m pytest tests/pacs/test_regions.py -q
"""

from __future__ import annotations

import os
import re
import tomllib
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_REGIONS: tuple[str, ...] = (
    "skull",
    "cervical_spine",
    "thoracic_spine",
    "lumbar_spine",
    "chest",
    "clavicle",
    "shoulder",
    "elbow",
    "hand",
    "pelvis",
    "hip",
    "knee",
    "ankle",
    "foot",
)

# Instance-index columns, in the order they are consulted.
TAG_PRIORITY: tuple[str, ...] = (
    "body_part_examined",
    "series_description",
    "study_description",
    "protocol_name",
)

# The mapping file ships beside this module (package data in pyproject.toml).
DEFAULT_MAPPING_PATH = Path(__file__).with_name("regions.toml")

LABEL_COLUMNS: tuple[str, ...] = (
    "sop_instance_uid",
    "recorded_region",
    "recorded_raw",
    "recorded_tag",
)

_SECTIONS = ("ignore", "other_anatomy", "multi_region", "regions")
_GROUP_KEYS = ("terms", "patterns")
_REGION_KEYS = ("terms", "patterns", "secondary")
_REGION_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")

# Broken-umlaut tolerance: the umlaut may be transliterated, stripped, replaced by "_" (which
# stands for "?", "_", U+FFFD or an unknown letter) or, except for ß, missing altogether.
_UMLAUT_PATTERNS = {"ä": "(?:ae|a|_)?", "ö": "(?:oe|o|_)?", "ü": "(?:ue|u|_)?", "ß": "(?:ss|_)"}
_TRANSLITERATE = {"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"}
# Letters a correct mojibake repair may produce; "HÃŒFTE" (upper-cased mojibake) would
# otherwise "repair" to "HÌFTE".
_PLAUSIBLE_REPAIR = frozenset("äöüÄÖÜßẞéèêáàâçñÉÈÁÀ")
_MOJIBAKE_PAIR = re.compile("Ã[^\x00-\x7f]")
_LETTER_DIGIT = re.compile(r"(?<=[a-zäöüß])(?=[0-9])|(?<=[0-9])(?=[a-zäöüß])")
_LONE_UNDERSCORE = re.compile(r"(?<![a-z0-9])_+(?![a-z0-9])")
_WORD_START = r"(?<![a-z0-9])"
_WORD_END = r"(?![a-z0-9])"


class RegionMappingError(ValueError):
    """A region mapping file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class RegionLabel:
    """The recorded region of one instance.

    Attributes:
        region: Region from the vocabulary, or None when no tag maps.
        raw: The raw string that gave the region; when nothing maps, the first non-empty
            string looked at (None when all tags are empty).
        tag: The index column ``raw`` came from.
    """

    region: str | None
    raw: str | None
    tag: str | None


@dataclass(frozen=True)
class RegionMatch:
    """Why a raw string maps where it does.

    Attributes:
        region: The mapped region or None.
        reason: One line for humans: the deciding terms, or why there is no label.
        terms: The winning terms as written in the mapping file, in text order.
    """

    region: str | None
    reason: str
    terms: tuple[str, ...]


@dataclass(frozen=True)
class _Term:
    text: str  # as written in the file
    entry: str  # e.g. "regions.hip", for messages
    kind: str  # "region" | "other" | "multi" | "ignore"
    region: str | None
    secondary: bool
    regex: re.Pattern[str]
    specificity: int


@dataclass(frozen=True)
class _Hit:
    term: _Term
    start: int
    end: int


def _repair_mojibake(text: str) -> str:
    """Undo UTF-8 bytes that were decoded as cp1252/latin-1, at most twice."""
    for _ in range(2):
        if text.isascii():
            return text
        for encoding in ("cp1252", "latin-1"):
            try:
                fixed = text.encode(encoding).decode("utf-8")
            except UnicodeError:
                continue
            if fixed != text and all(
                c.isascii() or not c.isalpha() or c in _PLAUSIBLE_REPAIR for c in fixed
            ):
                text = fixed
                break
        else:
            break
    # Whatever mojibake is left (e.g. upper-cased) is one broken character.
    return _MOJIBAKE_PAIR.sub("_", text)


def _fold(text: str, *, term: bool = False) -> str:
    """Normalise text for matching: lowercase ASCII words separated by single spaces.

    With ``term=True`` (mapping-file terms) umlauts, ß and ``*`` are kept so that the term
    compiler can turn them into tolerant patterns, and no mojibake repair is attempted.
    """
    if not term:
        text = _repair_mojibake(text)
    text = unicodedata.normalize("NFKC", text)
    text = text.lower() if term else text.casefold()
    out: list[str] = []
    for ch in text:
        if "a" <= ch <= "z" or "0" <= ch <= "9":
            out.append(ch)
        elif ch in _TRANSLITERATE:
            out.append(ch if term else _TRANSLITERATE[ch])
        elif ch == "*" and term:
            out.append(ch)
        elif ch in "?_\ufffd":
            out.append("_")
        elif ch.isascii():
            out.append(" ")
        else:
            base = "".join(
                c for c in unicodedata.normalize("NFKD", ch) if c.isascii() and c.isalnum()
            )
            out.append(base.lower() if base else "_" if ch.isalpha() else " ")
    folded = _LETTER_DIGIT.sub(" ", "".join(out))
    folded = _LONE_UNDERSCORE.sub(" ", folded)
    return " ".join(folded.split())


def normalize(raw: str) -> str:
    """The normalised form that terms and ``patterns`` are matched against.

    Example: ``normalize("HÃœFTE li. 2 E.") == "huefte li 2 e"``.
    """
    return _fold(raw)


def _compile_term(text: str, where: str) -> tuple[re.Pattern[str], int, str]:
    """Compile one file term to (regex, specificity, canonical form for duplicate checks)."""
    folded = _fold(text, term=True)
    if not re.search(r"[a-z0-9äöüß]", folded):
        raise RegionMappingError(f"{where}: term {text!r} has no letters or digits")
    parts: list[str] = []
    for ch in folded:
        if ch in _UMLAUT_PATTERNS:
            parts.append(_UMLAUT_PATTERNS[ch])
        elif ch == "*":
            parts.append("[a-z]*")
        elif ch == " ":
            parts.append("[ _]+")
        else:
            parts.append(re.escape(ch))
    regex = re.compile(_WORD_START + "".join(parts) + _WORD_END)
    specificity = sum(ch not in "* " for ch in folded)
    canonical = "".join(_TRANSLITERATE.get(ch, ch) for ch in folded)
    return regex, specificity, canonical


def _compile_pattern(pattern: str, where: str) -> tuple[re.Pattern[str], int]:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise RegionMappingError(
            f"{where}: pattern {pattern!r} is not a valid regular expression: {exc}"
        ) from None
    return regex, sum(c.isalnum() for c in pattern)


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegionMappingError(f"{where} must be a list of strings, got {value!r}")
    return value


def _check_keys(table: Any, allowed: Sequence[str], where: str) -> Mapping[str, Any]:
    if not isinstance(table, Mapping):
        raise RegionMappingError(f"{where} must be a table, got {type(table).__name__}")
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise RegionMappingError(
            f"{where}: unknown key {unknown[0]!r}; valid keys are {', '.join(allowed)}"
        )
    return table


def _nonempty(value: Any) -> str | None:
    """``value`` if it is a string with something besides whitespace, else None (NaN, None...)."""
    return value if isinstance(value, str) and value.strip() else None


class RegionMapper:
    """Maps raw PACS strings to a region vocabulary defined by a mapping file.

    Args:
        config: The parsed mapping (see ``pacs/regions.toml`` for its shape and rules).
        source: Where ``config`` came from, used in error messages.

    Raises:
        RegionMappingError: On unknown keys, empty regions, bad terms or patterns, or a term
            listed under two entries.
    """

    def __init__(self, config: Mapping[str, Any], *, source: str = "<mapping>") -> None:
        self._source = source
        config = _check_keys(config, _SECTIONS, source)
        regions = config.get("regions")
        if not isinstance(regions, Mapping) or not regions:
            raise RegionMappingError(
                f"{source}: [regions] is missing or empty; define at least one region"
            )
        terms: list[_Term] = []
        ignore: list[_Term] = []
        owner: dict[str, str] = {}

        def add(
            group: Mapping[str, Any], entry: str, kind: str, region: str | None, secondary: bool
        ) -> int:
            where = f"{source}: [{entry}]"
            count = 0
            for text in _string_list(group.get("terms", []), f"{where} terms"):
                regex, spec, canonical = _compile_term(text, where)
                if canonical in owner and owner[canonical] != entry:
                    raise RegionMappingError(
                        f"{source}: term {text!r} is listed under [{owner[canonical]}] and "
                        f"[{entry}]; a term may belong to one entry only, delete one of them"
                    )
                owner[canonical] = entry
                (ignore if kind == "ignore" else terms).append(
                    _Term(text, entry, kind, region, secondary, regex, spec)
                )
                count += 1
            for pattern in _string_list(group.get("patterns", []), f"{where} patterns"):
                regex, spec = _compile_pattern(pattern, where)
                (ignore if kind == "ignore" else terms).append(
                    _Term(pattern, entry, kind, region, secondary, regex, spec)
                )
                count += 1
            return count

        for section, kind in (
            ("ignore", "ignore"),
            ("other_anatomy", "other"),
            ("multi_region", "multi"),
        ):
            if section in config:
                add(
                    _check_keys(config[section], _GROUP_KEYS, f"{source}: [{section}]"),
                    section,
                    kind,
                    None,
                    False,
                )
        for name, table in regions.items():
            entry = f"regions.{name}"
            if not isinstance(name, str) or not _REGION_NAME.match(name):
                raise RegionMappingError(
                    f"{source}: region name {name!r} must be lowercase letters, digits "
                    "and '_', starting with a letter"
                )
            table = _check_keys(table, _REGION_KEYS, f"{source}: [{entry}]")
            secondary = table.get("secondary", False)
            if not isinstance(secondary, bool):
                raise RegionMappingError(
                    f"{source}: [{entry}] secondary must be true or false, got {secondary!r}"
                )
            if add(table, entry, "region", name, secondary) == 0:
                raise RegionMappingError(
                    f"{source}: [{entry}] is empty; give it at least one term or pattern"
                )
        self._regions = tuple(regions)
        self._terms = tuple(terms)
        self._ignore = tuple(ignore)
        self._cache: dict[str, RegionMatch] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] | None = None) -> RegionMapper:
        """Load a TOML (``.toml``) or YAML (``.yaml``/``.yml``) mapping; None = packaged default."""
        if path is None:
            path = DEFAULT_MAPPING_PATH
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".toml", ".yaml", ".yml"):
            raise RegionMappingError(f"{path}: region mapping must end in .toml, .yaml or .yml")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RegionMappingError(f"{path}: cannot read region mapping: {exc}") from None
        if suffix == ".toml":
            config = _parse_toml(text, str(path))
        else:
            import yaml

            try:
                config = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise RegionMappingError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(config, Mapping):
            raise RegionMappingError(f"{path}: expected a table at the top level")
        return cls(config, source=str(path))

    @property
    def regions(self) -> tuple[str, ...]:
        """The vocabulary, in file order."""
        return self._regions

    def explain(self, raw: str | None) -> RegionMatch:
        """Map one raw string and say why."""
        raw = _nonempty(raw)
        if raw is None:
            return RegionMatch(None, "empty", ())
        cached = self._cache.get(raw)
        if cached is None:
            if len(self._cache) >= 200_000:
                self._cache.clear()
            cached = self._cache[raw] = self._explain(normalize(raw))
        return cached

    def map_string(self, raw: str | None) -> str | None:
        """The region of one raw string, or None (empty, unknown, ambiguous, multi-region)."""
        return self.explain(raw).region

    def map_tags(self, tags: Mapping[str, str | None]) -> RegionLabel:
        """Label one instance from its tags, consulted in ``TAG_PRIORITY`` order.

        The first tag whose string maps wins; a tag that is empty, unknown or ambiguous
        falls through to the next.
        """
        first: tuple[str, str] | None = None
        for tag in TAG_PRIORITY:
            raw = _nonempty(tags.get(tag))
            if raw is None:
                continue
            region = self.map_string(raw)
            if region is not None:
                return RegionLabel(region, raw, tag)
            if first is None:
                first = (raw, tag)
        return RegionLabel(None, *first) if first else RegionLabel(None, None, None)

    def label_frame(self, index: pd.DataFrame, *, with_reason: bool = False) -> pd.DataFrame:
        """Label every row of the instance index, mapping each distinct string once.

        Args:
            index: Needs ``sop_instance_uid``; tag columns from ``TAG_PRIORITY`` that are
                absent count as empty.
            with_reason: Add ``recorded_reason`` (``RegionMatch.reason`` of ``recorded_raw``).

        Returns:
            One row per input row, same index, columns ``sop_instance_uid, recorded_region,
            recorded_raw, recorded_tag``; the ``recorded_*`` columns have object dtype with
            None where null.
        """
        if "sop_instance_uid" not in index.columns:
            raise ValueError("label_frame needs a 'sop_instance_uid' column (the instance index)")
        n = len(index)
        region = np.full(n, None, dtype=object)
        raw = np.full(n, None, dtype=object)
        tag = np.full(n, None, dtype=object)
        decided = np.zeros(n, dtype=bool)
        for column in TAG_PRIORITY:
            if column not in index.columns:
                continue
            codes, uniques = pd.factorize(index[column], use_na_sentinel=True)
            values = np.asarray(uniques, dtype=object)
            # Last slot serves code -1 (missing value).
            mapped = np.array(
                [self.map_string(v) if isinstance(v, str) else None for v in values] + [None],
                dtype=object,
            )
            nonempty = np.array([_nonempty(v) is not None for v in values] + [False], dtype=bool)
            row_region = mapped[codes]
            row_nonempty = nonempty[codes]
            hit = ~decided & pd.notna(row_region)
            region[hit] = row_region[hit]
            decided |= hit
            # raw/tag: the winning tag, else the first non-empty one seen.
            take = hit | (pd.isna(raw) & row_nonempty)
            row_raw = np.append(values, None)[codes]
            raw[take] = row_raw[take]
            tag[take] = column
        # Explicit object dtype: pandas 3 would infer "str" (NaN for None), and "object" for
        # an all-null column, so the schema would depend on the data.
        out = pd.DataFrame(
            {
                "sop_instance_uid": index["sop_instance_uid"],
                "recorded_region": pd.Series(region, index=index.index, dtype=object),
                "recorded_raw": pd.Series(raw, index=index.index, dtype=object),
                "recorded_tag": pd.Series(tag, index=index.index, dtype=object),
            },
            index=index.index,
        )
        if with_reason:
            reasons = [self.explain(r).reason for r in raw]
            out["recorded_reason"] = pd.Series(reasons, index=index.index, dtype=object)
        return out

    def _explain(self, text: str) -> RegionMatch:
        hits = [
            _Hit(t, m.start(), m.end())
            for t in self._terms
            for m in t.regex.finditer(text)
            if m.end() > m.start()
        ]
        hits = [h for h in hits if not any(_beats(o, h) for o in hits)]
        hits.sort(key=lambda h: h.start)

        def quote(hs: list[_Hit]) -> str:
            return ", ".join(
                f"{h.term.region or h.term.entry} ({text[h.start : h.end]!r} ~ {h.term.text!r})"
                for h in hs
            )

        multi = [h for h in hits if h.term.kind == "multi"]
        if multi:
            return RegionMatch(
                None, f"names several regions at once: {quote(multi)}", _texts(multi)
            )
        for secondary in (False, True):
            found = [h for h in hits if h.term.kind == "region" and h.term.secondary == secondary]
            names = list(dict.fromkeys(h.term.region for h in found))
            if len(names) == 1:
                return RegionMatch(names[0], f"matched {quote(found)}", _texts(found))
            if len(names) > 1:
                return RegionMatch(None, f"ambiguous: {quote(found)}", _texts(found))
        other = [h for h in hits if h.term.kind == "other"]
        if other:
            return RegionMatch(None, f"not in the vocabulary: {quote(other)}", _texts(other))
        leftover = self._leftover(text, hits)
        if not leftover:
            return RegionMatch(
                None, f"only ignore words in {text!r}" if text else "no letters or digits", ()
            )
        return RegionMatch(None, f"no region term; unrecognised: {leftover!r}", ())

    def _leftover(self, text: str, hits: list[_Hit]) -> str:
        chars = list(text)
        spans = [(h.start, h.end) for h in hits]
        spans += [(m.start(), m.end()) for t in self._ignore for m in t.regex.finditer(text)]
        for start, end in spans:
            chars[start:end] = " " * (end - start)
        return " ".join("".join(chars).replace("_", " ").split())

    def __repr__(self) -> str:
        return f"RegionMapper(source={self._source!r}, regions={self._regions!r})"


def _beats(other: _Hit, hit: _Hit) -> bool:
    """Whether ``other`` covers ``hit`` and is longer, or as long and more specific."""
    if other is hit or other.start > hit.start or other.end < hit.end:
        return False
    longer = (other.end - other.start) > (hit.end - hit.start)
    return longer or other.term.specificity > hit.term.specificity


def _texts(hits: list[_Hit]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(h.term.text for h in hits))


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegionMappingError(f"{source}: not valid TOML: {exc}") from None
