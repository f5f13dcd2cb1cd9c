"""Image datasets: controlled aesthetic counterfactuals of real photographs.

Every variant changes ONE attribute of one source photograph at a graded, signed level:

- lighting: ``exposure`` (EV stops, hue-preserving highlight roll-off), ``contrast`` (log2 of
  the gain around the mean luma), ``tone`` (-log2 gamma of the luma: > 0 is high-key);
- color: ``saturation`` (chroma gain - 1 at constant luma and hue), ``color_cast`` (white
  balance in linear light at constant mean luma: > 0 warm, < 0 cool);
- composition: square crops of one fixed size that put the salient point on a rule-of-thirds
  point (``crop_thirds``), the center (``crop_center``), the frame edge (``crop_cutoff``), high
  or low in the frame (``headroom_low``: subject near the top edge, ``headroom_high``: lots of
  space above it), and horizon ``tilt`` (rotation, cropped to the inscribed square).

Condition labels are ``<attribute>_low`` / ``<attribute>_high`` for the graded attributes (sign
of the level) plus the composition labels; the baseline label ``original`` is the unchanged
photograph (center square) and a few near-identity jittered copies of it, so the baseline arm
has more than one sample per source. Splits are by SOURCE photograph: variants of one photo
never straddle train and test (``frame_id`` = source id, like counterfactual prompt frames).

Images are float RGB arrays in [0, 1] inside this module, uint8 ``[sample, y, x, channel]`` on
disk (``store.IMAGES_FILE``). Scored photographs from CSV manifests live in
:mod:`circuitflow.datasets.manifests`.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.ndimage import gaussian_filter, uniform_filter

from circuitflow.core.errors import CircuitflowError

# scikit-image is imported where it is used: prompt datasets and manifests work without it.

# ---------------------------------------------------------------- sources
# Real photographs that ship inside installed wheels (no download): name -> loader key.
# name -> (package, file inside it, subject point (x, y) as fractions of width / height,
# annotated by eye for this project; other images use a spectral-residual saliency peak)
BUILTIN_SOURCES = {
    "astronaut": ("skimage", "data/astronaut.png", (0.45, 0.18)),  # face
    "chelsea": ("skimage", "data/chelsea.png", (0.52, 0.55)),  # cat's face
    "coffee": ("skimage", "data/coffee.png", (0.57, 0.25)),  # cup
    "rocket": ("skimage", "data/rocket.jpg", (0.56, 0.55)),  # rocket
    "motorcycle": ("skimage", "data/motorcycle_left.png", (0.45, 0.6)),  # motorcycle
    "china": ("sklearn", "datasets/images/china.jpg", (0.32, 0.45)),  # pagoda
    "flower": ("sklearn", "datasets/images/flower.jpg", (0.47, 0.45)),  # dahlia
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", (0.52, 0.42)),  # face
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LUMA = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 weights
GAMMA = 2.2  # pure power-law "linear light": a scale there is a scale of the encoded values


class ImageDatasetError(CircuitflowError, ValueError):
    """A source image, folder or manifest is unusable; the message names it and the fix."""


def _to_float_rgb(arr: np.ndarray, where: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ImageDatasetError(f"{where}: expected an RGB image, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    return np.clip(arr.astype(np.float64), 0.0, 1.0)


def load_builtin(name: str) -> np.ndarray:
    """A photograph shipped in an installed wheel (scikit-image, scikit-learn, matplotlib)."""
    if name not in BUILTIN_SOURCES:
        raise ImageDatasetError(
            f"unknown builtin image {name!r}; known: {', '.join(sorted(BUILTIN_SOURCES))}"
        )
    package, rel, _ = BUILTIN_SOURCES[name]
    try:
        path = importlib.resources.files(package).joinpath(rel)
    except ModuleNotFoundError:
        raise ImageDatasetError(
            f"builtin image {name!r} ships in {package!r}, which is not installed; run `make setup`"
        ) from None
    if not path.is_file():
        raise ImageDatasetError(f"builtin image {name!r}: {path} missing; reinstall {package}")
    return load_image_file(path)


def load_image_file(path: str | Path) -> np.ndarray:
    """An image file as float RGB in [0, 1] (alpha dropped, grey expanded)."""
    try:
        with Image.open(path) as im:
            return _to_float_rgb(np.asarray(im.convert("RGB")), str(path))
    except FileNotFoundError:
        raise ImageDatasetError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        problem = "not an image PIL can decode (corrupt, empty or another format)"
    except OSError as err:
        problem = f"cannot decode image ({err}: corrupt or truncated)"
    raise ImageDatasetError(f"{path}: {problem}; replace the file or remove it from the sources")


def resolve_sources(sources: Sequence[str]) -> list[tuple[str, str]]:
    """``[(source_id, spec)]`` for config entries: ``builtin:<name>``, an image file, or a
    folder of images (sorted). ``spec`` is ``builtin:<name>`` or a file path."""
    out: list[tuple[str, str]] = []
    for entry in sources:
        if entry.startswith("builtin:"):
            name = entry.removeprefix("builtin:")
            if name not in BUILTIN_SOURCES:
                raise ImageDatasetError(
                    f"image source {entry!r}: unknown builtin; known: "
                    + ", ".join(f"builtin:{n}" for n in sorted(BUILTIN_SOURCES))
                )
            out.append((name, entry))
            continue
        path = Path(entry).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ImageDatasetError(f"image folder {path}: no {'/'.join(IMAGE_SUFFIXES)} files")
            out += [(p.stem, str(p)) for p in files]
        elif path.is_file():
            out.append((path.stem, str(path)))
        else:
            raise ImageDatasetError(
                f"image source {entry!r}: not builtin:<name>, an image file or a folder"
            )
    ids = [sid for sid, _ in out]
    dupes = sorted({s for s in ids if ids.count(s) > 1})
    if dupes:
        raise ImageDatasetError(f"image sources: two images named {dupes[0]!r}; rename one")
    return out


def load_source(spec: str) -> np.ndarray:
    """The image behind a :func:`resolve_sources` spec (``builtin:<name>`` or a file path)."""
    if spec.startswith("builtin:"):
        return load_builtin(spec.removeprefix("builtin:"))
    return load_image_file(spec)


# ---------------------------------------------------------------- measurements
def luma(img: np.ndarray) -> np.ndarray:
    """Rec. 709 luma of gamma-encoded RGB: [..., 3] -> [...]."""
    return img @ LUMA


def hue(img: np.ndarray) -> np.ndarray:
    """HSV hue in [0, 1) (scikit-image)."""
    from skimage.color import rgb2hsv

    return rgb2hsv(img)[..., 0]


def resize(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Anti-aliased resize to ``size`` (square int, or (height, width))."""
    from skimage.transform import resize as _resize

    shape = (size, size) if isinstance(size, int) else tuple(size)
    return np.clip(_resize(img, (*shape, 3), order=1, anti_aliasing=True), 0.0, 1.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] -> uint8 (rounded, clipped)."""
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _hue_preserving_clip(img: np.ndarray) -> np.ndarray:
    """Pixels with a channel above 1 are scaled down as a whole (hue and ratios kept)."""
    peak = img.max(axis=-1, keepdims=True)
    return np.clip(np.where(peak > 1.0, img / np.maximum(peak, 1e-12), img), 0.0, 1.0)


# ---------------------------------------------------------------- photometric transforms
def exposure(img: np.ndarray, ev: float) -> np.ndarray:
    """Scale linear light by 2**ev; highlights roll off by scaling the whole pixel, so hue is
    kept everywhere and mean luma is monotone in ``ev``."""
    return _hue_preserving_clip(img * 2.0 ** (ev / GAMMA))


def contrast(img: np.ndarray, gain: float) -> np.ndarray:
    """Scale every channel's deviation from the image's mean luma by ``gain`` (> 0)."""
    if gain <= 0:
        raise ValueError(f"contrast gain must be > 0, got {gain}")
    m = float(luma(img).mean())
    return np.clip(m + gain * (img - m), 0.0, 1.0)


def tone(img: np.ndarray, gamma: float) -> np.ndarray:
    """Gamma curve on the luma only (pixel scaled as a whole): < 1 high-key, > 1 low-key."""
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    y = luma(img)[..., None]
    ratio = np.where(y > 1e-6, np.power(np.maximum(y, 1e-6), gamma) / np.maximum(y, 1e-6), 1.0)
    return _hue_preserving_clip(img * ratio)


def saturation(img: np.ndarray, gain: float) -> np.ndarray:
    """Chroma gain around each pixel's luma; luma and hue are kept (the gain is lowered per
    pixel where it would leave the gamut)."""
    if gain < 0:
        raise ValueError(f"saturation gain must be >= 0, got {gain}")
    y = luma(img)[..., None]
    d = img - y
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = np.where(d > 1e-9, (1.0 - y) / d, np.where(d < -1e-9, -y / d, np.inf))
    s = np.minimum(gain, limit.min(axis=-1, keepdims=True))
    return np.clip(y + s * d, 0.0, 1.0)


def color_cast(img: np.ndarray, temperature: float) -> np.ndarray:
    """White balance in linear light: gains (1 + t, g, 1 - t), g chosen so the luma weights
    sum to 1 (mean luma kept before clipping). t > 0 warm, t < 0 cool; |t| < 1."""
    if not -1 < temperature < 1:
        raise ValueError(f"color_cast temperature must be in (-1, 1), got {temperature}")
    wr, wg, wb = LUMA
    g = (1.0 - wr * (1 + temperature) - wb * (1 - temperature)) / wg
    gains = np.array([1 + temperature, g, 1 - temperature])
    lin = np.power(img, GAMMA) * gains
    return np.power(np.clip(lin, 0.0, 1.0), 1.0 / GAMMA)


PHOTOMETRIC = {
    "exposure": (exposure, "ev"),
    "contrast": (contrast, "gain"),
    "tone": (tone, "gamma"),
    "saturation": (saturation, "gain"),
    "color_cast": (color_cast, "temperature"),
}
ATTRIBUTE_GROUP = {
    "exposure": "lighting",
    "contrast": "lighting",
    "tone": "lighting",
    "saturation": "color",
    "color_cast": "color",
    "composition": "composition",
    "tilt": "composition",
    "original": "none",
}


def photometric_level(attribute: str, param: float) -> float:
    """The signed graded level of a transform parameter (0 = unchanged)."""
    if attribute in ("exposure", "color_cast"):
        return float(param)
    if attribute == "contrast":
        return float(math.log2(param))
    if attribute == "tone":
        return float(-math.log2(param))
    if attribute == "saturation":
        return float(param - 1.0)
    raise ValueError(f"no graded level for attribute {attribute!r}")


# ---------------------------------------------------------------- composition
def salient_point(img: np.ndarray, work: int = 64) -> tuple[float, float]:
    """(x, y) in pixels of the peak of a spectral-residual saliency map (Hou & Zhang 2007),
    smoothed and weighted toward the image center (a photographer's prior)."""
    h, w = img.shape[:2]
    g = resize(img, (work, work)) @ LUMA
    f = np.fft.fft2(g)
    log_amp = np.log(np.abs(f) + 1e-9)
    residual = log_amp - uniform_filter(log_amp, size=3, mode="wrap")
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(f)))) ** 2
    sal = gaussian_filter(sal, sigma=work / 16)
    yy, xx = np.mgrid[0:work, 0:work]
    prior = np.exp(-(((xx - work / 2) ** 2 + (yy - work / 2) ** 2) / (2 * (work / 3) ** 2)))
    sal = sal * prior
    y, x = np.unravel_index(np.argmax(sal), sal.shape)
    return (x + 0.5) * w / work, (y + 0.5) * h / work


def max_crop_side(
    point: tuple[float, float], shape: tuple[int, int], targets: Iterable[tuple[float, float]]
) -> float:
    """Largest square side that can place ``point`` at every relative ``target`` (tx, ty)
    while staying inside an image of ``shape`` (height, width)."""
    h, w = shape
    px, py = point
    side = float(min(h, w))
    for tx, ty in targets:
        for pos, extent, t in ((px, w, tx), (py, h, ty)):
            if t > 0:
                side = min(side, pos / t)
            if t < 1:
                side = min(side, (extent - pos) / (1 - t))
    return side


def crop_at(
    img: np.ndarray, point: tuple[float, float], target: tuple[float, float], side: float, size: int
) -> tuple[np.ndarray, dict]:
    """Square crop of ``side`` pixels placing ``point`` at relative ``target`` of the crop
    (clamped to the image), resized to ``size``. Params record the window and where the
    point actually lands."""
    h, w = img.shape[:2]
    side = float(min(side, h, w))
    x0 = min(max(point[0] - target[0] * side, 0.0), w - side)
    y0 = min(max(point[1] - target[1] * side, 0.0), h - side)
    from skimage.transform import resize as _resize

    # sub-pixel window via an affine warp would be exact; integer bounds keep it simple and
    # place the point within half a source pixel of the target.
    xi, yi, si = int(round(x0)), int(round(y0)), int(round(side))
    xi, yi = min(max(xi, 0), w - si), min(max(yi, 0), h - si)
    window = img[yi : yi + si, xi : xi + si]
    out = np.clip(_resize(window, (size, size, 3), order=1, anti_aliasing=True), 0.0, 1.0)
    params = {
        "window": [xi, yi, si, si],
        "target": [float(target[0]), float(target[1])],
        "salient": [float(point[0]), float(point[1])],
        "salient_rel": [float((point[0] - xi) / si), float((point[1] - yi) / si)],
    }
    return out, params


def tilt(img: np.ndarray, degrees: float, size: int) -> np.ndarray:
    """Rotate about the center and crop the largest inscribed axis-aligned centered square."""
    from skimage.transform import rotate

    h, w = img.shape[:2]
    s = min(h, w)
    sq = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    rot = rotate(sq, degrees, resize=False, order=1, mode="edge")
    a = math.radians(abs(degrees))
    inner = s / (math.cos(a) + math.sin(a))  # inscribed axis-aligned square of a rotated square
    m = int(math.ceil((s - inner) / 2))
    return resize(rot[m : s - m, m : s - m], size)


def center_square(
    img: np.ndarray, size: int, jitter: tuple[float, float, float] = (0, 0, 1)
) -> tuple[np.ndarray, dict]:
    """Center square (shifted by (dx, dy) of the side and scaled by ``jitter[2]``), resized."""
    h, w = img.shape[:2]
    s = min(h, w) * jitter[2]
    cx = w / 2 + jitter[0] * s
    cy = h / 2 + jitter[1] * s
    return crop_at(img, (cx, cy), (0.5, 0.5), s, size)


# ---------------------------------------------------------------- variant plan
THIRDS = [(1 / 3, 1 / 3), (2 / 3, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 2 / 3)]
COMPOSITION_TARGETS = {
    "crop_thirds": THIRDS,
    "crop_center": [(0.5, 0.5)],
    "crop_cutoff": [(0.04, 0.5), (0.5, 0.96)],  # subject cut by the left / bottom edge
    "headroom_low": [(0.5, 0.12)],  # subject against the top edge
    "headroom_high": [(0.5, 0.8)],  # lots of empty space above the subject
}
DEFAULT_LEVELS = {
    "exposure": [-2.0, -1.0, 1.0, 2.0],
    "contrast": [0.4, 0.7, 1.4, 2.0],
    "tone": [2.0, 1.4, 0.7, 0.5],
    "saturation": [0.0, 0.5, 1.5, 2.0],
    "color_cast": [-0.3, -0.15, 0.15, 0.3],
    "tilt": [-6.0, -3.0, 3.0, 6.0],
}
BASELINE = "original"
LABELS = (
    BASELINE,
    *[f"{a}_{s}" for a in PHOTOMETRIC for s in ("low", "high")],
    *COMPOSITION_TARGETS,
    "tilt",
)


def label_of(attribute: str, level: float) -> str:
    """Condition label of a graded photometric variant: ``<attribute>_low|high``."""
    return f"{attribute}_{'high' if level > 0 else 'low'}"


@dataclass(frozen=True)
class ImageSpec:
    """How to build an aesthetic counterfactual dataset (``config['datasets'][name]``)."""

    labels: tuple[str, ...]
    size: int = 224
    work_size: int = 448
    jitter_copies: int = 3
    min_crop_fraction: float = 0.35
    levels: dict = field(default_factory=lambda: dict(DEFAULT_LEVELS))

    def __post_init__(self) -> None:
        unknown = [label for label in self.labels if label not in LABELS]
        if unknown:
            raise ImageDatasetError(
                f"labels: {unknown[0]!r} is not an image condition; known: {', '.join(LABELS)}"
            )
        if BASELINE not in self.labels:
            raise ImageDatasetError(f"labels: image datasets need the baseline {BASELINE!r}")
        if self.size < 16 or self.work_size < self.size:
            raise ImageDatasetError(
                f"images.size {self.size} must be >= 16 and <= images.work_size {self.work_size}"
            )
        for attribute, values in self.levels.items():
            if attribute not in DEFAULT_LEVELS:
                raise ImageDatasetError(
                    f"images.levels: unknown attribute {attribute!r}; known: "
                    + ", ".join(DEFAULT_LEVELS)
                )
            if attribute != "tilt" and any(photometric_level(attribute, v) == 0 for v in values):
                raise ImageDatasetError(
                    f"images.levels.{attribute}: {values} contains the identity; the baseline "
                    f"{BASELINE!r} already is level 0"
                )


def subject_point(img: np.ndarray, origin: str) -> tuple[tuple[float, float], str]:
    """(x, y) pixels of the photo's subject and how it was found (annotated or saliency)."""
    name = origin.removeprefix("builtin:")
    if origin.startswith("builtin:") and name in BUILTIN_SOURCES:
        fx, fy = BUILTIN_SOURCES[name][2]
        return (fx * img.shape[1], fy * img.shape[0]), "annotated"
    return salient_point(img), "spectral_residual"


def source_variants(
    img: np.ndarray, source_id: str, spec: ImageSpec, seed: int, origin: str = ""
) -> Iterator[tuple[dict, np.ndarray]]:
    """Every variant of one photograph: yields (row, uint8 image). Rows carry ``source``,
    ``attribute``, ``group``, ``label``, ``level`` and the transform ``params``."""
    h, w = img.shape[:2]
    scale = spec.work_size / min(h, w)
    if scale < 1:
        img = resize(img, (int(round(h * scale)), int(round(w * scale))))
        h, w = img.shape[:2]
    labels = set(spec.labels)
    rng = np.random.default_rng([seed, *source_id.encode()])
    base, base_params = center_square(img, spec.size)

    def row(label, attribute, level, params, out, variant):
        return (
            {
                "sample_id": f"{source_id}.{variant}",
                "label": label,
                "frame_id": source_id,
                "source": source_id,
                "attribute": attribute,
                "group": ATTRIBUTE_GROUP[attribute],
                "level": float(level),
                "params": params,
            },
            to_uint8(out),
        )

    yield row(BASELINE, "original", 0.0, {"crop": base_params}, base, "original")
    for k in range(1, spec.jitter_copies):
        j = (float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.02, 0.02)), 0.96)
        out, params = center_square(img, spec.size, j)
        yield row(
            BASELINE, "original", 0.0, {"crop": params, "jitter": list(j)}, out, f"original{k}"
        )
    for attribute, (fn, pname) in PHOTOMETRIC.items():
        for value in spec.levels.get(attribute, DEFAULT_LEVELS[attribute]):
            level = photometric_level(attribute, value)
            label = label_of(attribute, level)
            if label in labels:
                yield row(
                    label,
                    attribute,
                    level,
                    {pname: float(value)},
                    fn(base, value),
                    f"{attribute}{value:+g}",
                )
    wanted = {k: v for k, v in COMPOSITION_TARGETS.items() if k in labels}
    if wanted:
        point, how = subject_point(img, origin)
        targets = [t for ts in wanted.values() for t in ts]
        side = max(max_crop_side(point, img.shape[:2], targets), spec.min_crop_fraction * min(h, w))
        side = min(side, min(img.shape[:2]))
        for label, ts in wanted.items():
            for i, (tx, ty) in enumerate(ts):
                out, params = crop_at(img, point, (tx, ty), side, spec.size)
                params["subject"] = how
                # graded composition level: distance of the subject from the frame center
                level = math.hypot(tx - 0.5, ty - 0.5)
                yield row(label, "composition", level, params, out, f"{label}{i}")
    if "tilt" in labels:
        for deg in spec.levels.get("tilt", DEFAULT_LEVELS["tilt"]):
            out = tilt(img, deg, spec.size)
            yield row("tilt", "tilt", abs(deg), {"degrees": float(deg)}, out, f"tilt{deg:+g}")


def split_sources(source_ids: Sequence[str], test_fraction: float, seed: int) -> dict[str, str]:
    """Seeded train/test assignment of whole source photographs (at least one per side)."""
    ids = sorted(source_ids)
    if len(ids) < 2:
        raise ImageDatasetError(
            f"image dataset has {len(ids)} source image(s); need at least 2 to split by source"
        )
    n_test = min(max(1, math.ceil(test_fraction * len(ids))), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    test = {ids[i] for i in order[:n_test]}
    return {sid: ("test" if sid in test else "train") for sid in ids}


def build_image_dataset(
    sources: Sequence[str], spec: ImageSpec, test_fraction: float, seed: int
) -> tuple[list[dict], np.ndarray]:
    """(rows, images uint8 [sample, size, size, 3]) for the configured sources."""
    resolved = resolve_sources(sources)
    splits = split_sources([sid for sid, _ in resolved], test_fraction, seed)
    rows, images = [], []
    for source_id, where in resolved:
        img = load_source(where)
        for r, im in source_variants(img, source_id, spec, seed, origin=where):
            r["split"] = splits[source_id]
            r["image_index"] = len(images)
            r["origin"] = where
            rows.append(r)
            images.append(im)
    return rows, np.stack(images)
