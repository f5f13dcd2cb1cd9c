"""Caption datasets: image-caption pairs for training and evaluating VLM projectors, offline.

Each photograph gives ``views`` augmented views (seeded square crops, horizontal flips) and
every view gets one graded level per attribute, applied with the edits of
:mod:`circuitflow.datasets.images`:

- ``exposure`` / ``contrast`` / ``tone`` / ``saturation`` / ``color_cast``: levels ``low``,
  ``mid`` (the identity) and ``high``, each a transform parameter (:data:`CAPTION_LEVELS`);
- ``composition``: where the crop puts the photo's subject point, ``centered``, ``thirds``
  (on a rule-of-thirds point) or ``cutoff`` (against the frame edge), named from where the
  subject actually lands.

Levels are drawn balanced within each photo. The caption is templated from what is known
exactly, the content label of the photo and the levels, e.g. "a dark, low-contrast, low-key
photo of a cat, centered, with muted colors and warm tones"; :data:`VOCABULARY` holds the
words of every level, so captions (and a model's descriptions) parse back into levels, and
:func:`distractor_captions` gives the captions that differ in exactly one attribute (for a
retrieval test against :func:`chance_levels`).

User captions come as a CSV of ``image_path,caption`` (:func:`load_caption_csv`): one
center square per row, no edits, so no levels and no distractors. Splits are by source
photograph (:func:`circuitflow.datasets.images.split_sources`). Images are uint8
``[sample, size, size, 3]``; rows go to ``samples.jsonl`` (``store.SAMPLES_FILE``).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from circuitflow.datasets.images import (
    COMPOSITION_TARGETS,
    PHOTOMETRIC,
    THIRDS,
    ImageDatasetError,
    crop_at,
    load_source,
    max_crop_side,
    photometric_level,
    resize,
    resolve_sources,
    split_sources,
    subject_point,
    to_uint8,
)
from circuitflow.workflow import schema_backed, schema_defaults

# ---------------------------------------------------------------- vocabulary
# attribute -> level -> words; the first word is the one captions use, the rest are synonyms
# a description may use. No word of one level occurs, as a whole word, in another's.
VOCABULARY: dict[str, dict[str, tuple[str, ...]]] = {
    "exposure": {
        "low": ("dark", "underexposed", "dim"),
        "mid": ("evenly exposed", "well exposed", "well-exposed", "normally exposed"),
        "high": ("bright", "overexposed", "brightly lit"),
    },
    "contrast": {
        "low": ("low-contrast", "low contrast", "flat"),
        "mid": ("medium-contrast", "medium contrast", "normal contrast"),
        "high": ("high-contrast", "high contrast", "punchy"),
    },
    "tone": {
        "low": ("low-key", "low key"),
        "mid": ("mid-key", "mid key"),
        "high": ("high-key", "high key"),
    },
    "saturation": {
        "low": ("muted colors", "desaturated", "muted", "washed-out colors"),
        "mid": ("natural colors",),
        "high": ("vivid colors", "vivid", "saturated colors", "saturated"),
    },
    "color_cast": {
        "low": ("cool tones", "cool", "bluish", "cold"),
        "mid": ("neutral tones", "neutral white balance", "neutral"),
        "high": ("warm tones", "warm", "yellowish", "golden"),
    },
    "composition": {
        "centered": ("centered", "in the center", "centred"),
        "thirds": ("off-center", "on a third", "rule of thirds", "off center"),
        "cutoff": ("cut off at the edge", "cut off", "cropped at the edge"),
    },
}
CAPTION_ATTRIBUTES = tuple(VOCABULARY)  # edit order: the photometric ones, then composition
LEVEL_NAMES = {a: tuple(levels) for a, levels in VOCABULARY.items()}
# transform parameter of low, mid (identity), high (the schema's default of
# datasets.<name>.captions.levels): between the inner and outer levels of
# images.DEFAULT_LEVELS, so five stacked edits keep the photo's content visible
CAPTION_LEVELS = {
    a: tuple(v) for a, v in schema_defaults("datasets", "*", "captions")["levels"].items()
}
# composition level -> crop targets (subject point as a fraction of the crop)
COMPOSITION_LEVELS = {
    "centered": COMPOSITION_TARGETS["crop_center"],
    "thirds": THIRDS,
    "cutoff": COMPOSITION_TARGETS["crop_cutoff"],
}
EDGE_CUTOFF = 0.12  # subject closer than this (fraction of the crop) to an edge: "cutoff"

# Content labels of the builtin photographs (what each shows).
CONTENT = {
    "astronaut": "an astronaut",
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "rocket": "a rocket",
    "motorcycle": "a motorcycle",
    "china": "a pagoda",
    "flower": "a flower",
    "grace_hopper": "a woman in uniform",
}
GENERIC_CONTENT = "a scene"

# ---------------------------------------------------------------- templates
# Segments split by "|". Slots: {content}, {adj} (exposure, contrast, tone: template k uses
# the k-th permutation of their order), {nouns} (saturation, color_cast; reversed in odd
# templates), {composition}; "A~" becomes a / an. A segment whose slots are all empty is
# dropped, so any subset of attributes reads cleanly.
_ADJ = ("exposure", "contrast", "tone")
_NOUN = ("saturation", "color_cast")
TEMPLATES = (
    "A~ {adj} photo of {content}|, {composition}|, with {nouns}",
    "{content}|, {composition}|, in A~ {adj} picture|, {nouns}",
    "{nouns}: |A~ {adj} shot of {content}|, {composition}",
    "{composition}: |{content}|, A~ {adj} image| with {nouns}",
    "{content} {composition}| in A~ {adj} photograph|, {nouns}",
    "{adj} lighting|, {nouns}|: {content}|, {composition}",
)
_ADJ_ORDERS = tuple(itertools.permutations(_ADJ))
UNLABELED = "unlabeled"  # label of CSV rows: their levels are unknown
CSV_COLUMNS = ("image_path", "caption")
CSV_OPTIONAL = ("split", "source")
_PROBE = np.full((2, 2, 3), 0.5)


class CaptionDatasetError(ImageDatasetError):
    """A caption spec, CSV or request is unusable; the message names the key, file or row."""


def _words_pattern(words: Sequence[str]) -> re.Pattern:
    alts = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])(?:{alts})(?![\w-])", re.IGNORECASE)


_PATTERNS = {
    a: {lvl: _words_pattern(words) for lvl, words in levels.items()}
    for a, levels in VOCABULARY.items()
}


def caption_word(attribute: str, level: str) -> str:
    """The word a caption uses for ``level`` of ``attribute`` (e.g. exposure low -> "dark")."""
    return VOCABULARY[attribute][level][0]


def caption_levels(
    text: str, attributes: Sequence[str] = CAPTION_ATTRIBUTES
) -> dict[str, tuple[str, ...]]:
    """``{attribute: levels whose words occur in text}`` (whole words, any case): one level
    per attribute for a templated caption; none, one or several for a free description."""
    return {a: tuple(lvl for lvl, p in _PATTERNS[a].items() if p.search(text)) for a in attributes}


# ---------------------------------------------------------------- spec
@dataclass(frozen=True)
@schema_backed("datasets", "*", "images")
@schema_backed("datasets", "*", "captions")
class CaptionSpec:
    """How to build a caption dataset (``config['datasets'][name]['captions']``; ``size`` and
    ``work_size`` come from the entry's ``images`` block). ``where`` names the config key in
    error messages."""

    views: int
    size: int
    work_size: int
    min_crop_fraction: float
    max_crop_fraction: float
    flip_probability: float
    attributes: tuple[str, ...]
    levels: dict
    templates: int
    label_attribute: str
    where: str = field(default="captions", compare=False, repr=False)

    def __post_init__(self) -> None:
        w = self.where

        def fail(key: str, problem: str):
            raise CaptionDatasetError(f"{w}.{key}: {problem}")

        if self.views < 1:
            fail("views", f"must be >= 1, got {self.views}")
        if self.size < 16 or self.work_size < self.size:
            images_key = w.rpartition(".")[0] + ".images" if "." in w else "images"
            raise CaptionDatasetError(
                f"{images_key}.size: must be >= 16 and <= work_size {self.work_size}, "
                f"got {self.size}"
            )
        lo, hi = self.min_crop_fraction, self.max_crop_fraction
        if not 0 < lo <= hi <= 1:
            fail(
                "min_crop_fraction",
                f"need 0 < min_crop_fraction <= max_crop_fraction <= 1, got {lo}, {hi}",
            )
        if not 0 <= self.flip_probability <= 1:
            fail("flip_probability", f"must be in [0, 1], got {self.flip_probability}")
        if not self.attributes:
            fail("attributes", f"give at least one of {', '.join(CAPTION_ATTRIBUTES)}")
        for a in self.attributes:
            if a not in VOCABULARY:
                fail(
                    "attributes", f"unknown attribute {a!r}; known: {', '.join(CAPTION_ATTRIBUTES)}"
                )
        if len(set(self.attributes)) != len(self.attributes):
            fail("attributes", f"{list(self.attributes)} names an attribute twice")
        for a, values in self.levels.items():
            if a not in CAPTION_LEVELS:
                fail("levels", f"unknown attribute {a!r}; known: {', '.join(CAPTION_LEVELS)}")
            try:
                for v in values:
                    PHOTOMETRIC[a][0](_PROBE, v)  # the transform's own range check
                graded = [photometric_level(a, v) for v in values]
            except (ValueError, TypeError) as err:
                fail(f"levels.{a}", f"{list(values)}: {err}")
            if len(graded) != 3 or not graded[0] < graded[1] == 0 < graded[2]:
                fail(
                    f"levels.{a}",
                    f"need [low, identity, high] (graded low < 0 < high), got {list(values)}",
                )
        if not 1 <= self.templates <= len(TEMPLATES):
            fail("templates", f"must be in 1..{len(TEMPLATES)}, got {self.templates}")
        if self.label_attribute not in self.attributes:
            fail(
                "label_attribute",
                f"{self.label_attribute!r} is not one of attributes {list(self.attributes)}",
            )

    def params(self, attribute: str) -> tuple[float, float, float]:
        """The (low, mid, high) transform parameters of a photometric attribute."""
        return tuple(self.levels.get(attribute, CAPTION_LEVELS[attribute]))

    @classmethod
    def from_config(cls, entry: Mapping, name: str = "captions") -> CaptionSpec:
        """From a dataset entry of the config (``captions`` block, ``images.size`` /
        ``images.work_size``); ``levels`` is merged over :data:`CAPTION_LEVELS`."""
        section = dict(entry.get("captions") or {})
        where = f"datasets.{name}.captions"
        keys = [f for f in cls.__dataclass_fields__ if f not in ("size", "work_size", "where")]
        unknown = sorted(set(section) - set(keys) - {"csv"})
        if unknown:
            raise CaptionDatasetError(
                f"{where}: unknown key {unknown[0]!r}; allowed: csv, {', '.join(keys)}"
            )
        kwargs = {k: section[k] for k in keys if k in section}
        if "attributes" in kwargs:
            kwargs["attributes"] = tuple(kwargs["attributes"])
        kwargs["levels"] = {
            **CAPTION_LEVELS,
            **{k: tuple(v) for k, v in section.get("levels", {}).items()},
        }
        images_block = entry.get("images") or {}
        for key in ("size", "work_size"):
            if key in images_block:
                kwargs[key] = images_block[key]
        return cls(**kwargs, where=where)


def chance_levels(spec: CaptionSpec) -> dict[str, float]:
    """Chance accuracy per attribute of picking the true caption among it and its
    distractors for that attribute (one per other level): ``1 / n_levels``."""
    return {a: 1.0 / len(LEVEL_NAMES[a]) for a in spec.attributes}


# ---------------------------------------------------------------- captions
def content_label(source_id: str, origin: str = "") -> str:
    """What a photo shows: the builtin's label, else the file stem as words (``_`` / ``-`` to
    spaces), else :data:`GENERIC_CONTENT` when the stem has no letters."""
    if origin.startswith("builtin:") and source_id in CONTENT:
        return CONTENT[source_id]
    words = " ".join(re.sub(r"[_\-]+", " ", Path(source_id).stem).split())
    return words if re.search(r"[A-Za-z]", words) else GENERIC_CONTENT


def _article(m: re.Match) -> str:
    return ("an " if m.group(1).lower() in "aeiou" else "a ") + m.group(1)


def render_caption(content: str, levels: Mapping[str, str], template: int) -> str:
    """The caption of ``template`` for a photo showing ``content`` at ``levels``
    (``{attribute: level}``, attributes not given are left out)."""
    adj_order, noun_order = _ADJ_ORDERS[template], _NOUN[:: (-1) ** template]
    slots = {
        "content": content,
        "adj": ", ".join(caption_word(a, levels[a]) for a in adj_order if a in levels),
        "nouns": " and ".join(caption_word(a, levels[a]) for a in noun_order if a in levels),
        "composition": caption_word("composition", levels["composition"])
        if "composition" in levels
        else "",
    }
    kept = []
    for seg in TEMPLATES[template].split("|"):
        names = re.findall(r"\{(\w+)\}", seg)
        if any(slots[n] for n in names):
            kept.append(seg.format(**slots))
    text = " ".join("".join(kept).split()).lstrip(",:; ")
    return re.sub(r"A~ (\w)", _article, text)


def _row_levels(row: Mapping) -> dict[str, str]:
    return {a: row[a] for a in CAPTION_ATTRIBUTES if isinstance(row.get(a), str)}


def distractor_captions(row: Mapping, spec: CaptionSpec | None = None) -> dict[str, list[str]]:
    """``{attribute: captions}``: the row's template and facts with that attribute's level
    replaced by each other level (in :data:`LEVEL_NAMES` order), for every attribute of
    ``spec`` (default: every attribute the row has)."""
    levels = _row_levels(row)
    if row.get("template", -1) < 0 or not levels:
        raise CaptionDatasetError(
            f"sample {row.get('sample_id')!r}: its caption came from a CSV, so its attribute "
            "levels are unknown and it has no distractor captions"
        )
    attributes = spec.attributes if spec is not None else tuple(levels)
    missing = [a for a in attributes if a not in levels]
    if missing:
        raise CaptionDatasetError(
            f"sample {row.get('sample_id')!r}: has no level for attribute {missing[0]!r}"
        )
    return {
        a: [
            render_caption(row["content"], {**levels, a: other}, row["template"])
            for other in LEVEL_NAMES[a]
            if other != levels[a]
        ]
        for a in attributes
    }


# ---------------------------------------------------------------- views
def _balanced(rng: np.random.Generator, options: Sequence, n: int) -> list:
    """``n`` draws using every option floor(n/k) or ceil(n/k) times, in seeded order."""
    order = rng.permutation(len(options))
    picks = order[np.resize(np.arange(len(options)), n)]
    return [options[i] for i in rng.permutation(picks)]


def composition_of(rel: tuple[float, float]) -> str:
    """Composition level of a subject at ``rel`` (x, y fractions of the frame): ``cutoff``
    within :data:`EDGE_CUTOFF` of an edge, else the nearer of the center and the nearest
    rule-of-thirds point (ties: centered)."""
    x, y = rel
    if min(x, 1 - x, y, 1 - y) < EDGE_CUTOFF:
        return "cutoff"
    to_center = math.hypot(x - 0.5, y - 0.5)
    to_third = min(math.hypot(x - tx, y - ty) for tx, ty in THIRDS)
    return "centered" if to_center <= to_third else "thirds"


def _composed_crop(rng, img, point, level, side, size):
    """Crop placing ``point`` on one of ``level``'s targets at ``side`` pixels, or at the
    largest side that can (not below half of it) when none fits."""
    h, w = img.shape[:2]
    targets = COMPOSITION_LEVELS[level]
    fits = [max_crop_side(point, (h, w), [t]) for t in targets]
    ok = [i for i, f in enumerate(fits) if f >= side]
    if ok:
        target = targets[ok[int(rng.integers(len(ok)))]]
    else:
        best = int(np.argmax(fits))
        target, side = targets[best], max(fits[best], side / 2)
    return crop_at(img, point, target, side, size)


def photo_views(
    img: np.ndarray,
    source_id: str,
    spec: CaptionSpec,
    seed: int,
    origin: str = "",
    content: str | None = None,
) -> Iterator[tuple[dict, np.ndarray]]:
    """The ``spec.views`` captioned views of one photo (float RGB [H, W, 3]): yields (row,
    uint8 image [size, size, 3]). Seeded by ``seed`` and ``source_id`` only."""
    h0, w0 = img.shape[:2]
    if (shrink := spec.work_size / min(h0, w0)) < 1:
        img = resize(img, (int(round(h0 * shrink)), int(round(w0 * shrink))))
    h, w = img.shape[:2]
    short = min(h, w)
    content = content_label(source_id, origin) if content is None else content
    rng = np.random.default_rng([seed, *source_id.encode()])
    attributes = [a for a in CAPTION_ATTRIBUTES if a in spec.attributes]  # edit order
    plan = {a: _balanced(rng, LEVEL_NAMES[a], spec.views) for a in attributes}
    templates = _balanced(rng, range(spec.templates), spec.views)
    composed = "composition" in spec.attributes
    point, how = subject_point(img, origin) if composed else (None, None)
    for k in range(spec.views):
        side = float(rng.uniform(spec.min_crop_fraction, spec.max_crop_fraction)) * short
        flip = bool(rng.random() < spec.flip_probability)
        if composed:
            out, crop = _composed_crop(rng, img, point, plan["composition"][k], side, spec.size)
        else:
            x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
            out, crop = crop_at(img, (x0 + side / 2, y0 + side / 2), (0.5, 0.5), side, spec.size)
        if flip:
            out = out[:, ::-1]
        levels, row = (
            {},
            {
                "sample_id": f"{source_id}.{k}",
                "label": "",
                "frame_id": source_id,
                "source": source_id,
                "origin": origin,
                "content": content,
            },
        )
        for a in attributes:
            if a == "composition":
                rx, ry = crop["salient_rel"]
                rel = (1 - rx if flip else rx, ry)
                levels[a] = composition_of(rel)
                graded = math.hypot(rel[0] - 0.5, rel[1] - 0.5)
            else:
                levels[a] = plan[a][k]
                param = spec.params(a)[LEVEL_NAMES[a].index(levels[a])]
                out = PHOTOMETRIC[a][0](out, param)
                graded = photometric_level(a, param)
            row[a] = levels[a]
            row[f"{a}_level"] = float(graded) + 0.0  # no -0.0
            row[f"{a}_word"] = caption_word(a, levels[a])
        if composed:
            row.update(subject_rel=[float(rel[0]), float(rel[1])], subject=how)
        xi, yi, si, _ = crop["window"]
        row.update(
            label=levels[spec.label_attribute],
            crop_box=[xi / w, yi / h, si / w, si / h],
            flip=flip,
            scale=si / short,
            template=int(templates[k]),
            caption=render_caption(content, levels, int(templates[k])),
        )
        yield row, to_uint8(out)


def build_caption_dataset(
    sources: Sequence[str], spec: CaptionSpec, test_fraction: float, seed: int
) -> tuple[list[dict], np.ndarray]:
    """(rows, images uint8 [n_photos * views, size, size, 3]) for ``builtin:<name>`` entries,
    image files and folders (every :data:`images.IMAGE_SUFFIXES` file, sorted); train and test
    split by photo. The same inputs and seed give the same rows and bytes."""
    resolved = resolve_sources(sources)
    splits = split_sources([sid for sid, _ in resolved], test_fraction, seed)
    rows, ims = [], []
    for source_id, where in resolved:
        for row, im in photo_views(load_source(where), source_id, spec, seed, origin=where):
            row["split"] = splits[source_id]
            row["image_index"] = len(ims)
            rows.append(row)
            ims.append(im)
    return rows, np.stack(ims)


def level_counts(rows: Sequence[Mapping]) -> dict[str, dict[str, dict[str, int]]]:
    """``{split: {attribute: {level: n}}}`` of the rows' attribute levels (for manifests)."""
    out: dict = {}
    for r in rows:
        for a, lvl in _row_levels(r).items():
            per = out.setdefault(r["split"], {}).setdefault(a, {})
            per[lvl] = per.get(lvl, 0) + 1
    return {s: {a: dict(sorted(c.items())) for a, c in d.items()} for s, d in sorted(out.items())}
