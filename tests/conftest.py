"""Synthetic data sets for the tests: PIL-drawn images and short texts, made in a temp folder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from mmsent import LABELS

WORDS = {
    "positive": ["love", "happy", "great", "awesome", "beautiful day", "so good"],
    "neutral": ["the report", "a table", "meeting at noon", "bus schedule", "new post"],
    "negative": ["hate", "sad", "terrible", "awful news", "so angry"],
}
TOKEN_WORDS = ["love", "happy", "great", "sad", "hate", "the", "report", "a", "photo", "of", "cat", "day", "so", "good"]
# a tiny random transformer (BERT, CLIP and BLIP towers): trains in a blink, no download
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
COLOURS = {"positive": (230, 190, 40), "neutral": (120, 120, 120), "negative": (30, 40, 160)}


def draw_image(tag: str, seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = random.Random(seed)
    base = COLOURS[tag]
    colour = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in base)
    img = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = rng.randint(0, size[0] - 10), rng.randint(0, size[1] - 10)
        draw.ellipse([x, y, x + 10, y + 10], fill=tuple(255 - c for c in colour))
    return img


def make_dataset(root: Path, per_class: int = 12, n_test: int = 6, seed: int = 0) -> Path:
    """A valid data set: `per_class` labelled guids per tag, `n_test` unlabelled, one redundant guid."""
    rng = random.Random(seed)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    train_rows, test_rows = [], []
    guid = 100
    for tag in LABELS:
        for i in range(per_class):
            guid += 1
            text = f"{rng.choice(WORDS[tag])} #{tag}day @user{i} http://t.co/x{i}"
            write_post(data, str(guid), text, draw_image(tag, guid), gb18030=(i % 4 == 0))
            train_rows.append((str(guid), tag))
    for i in range(n_test):
        guid += 1
        tag = LABELS[i % 3]
        write_post(data, str(guid), f"{rng.choice(WORDS[tag])} test", draw_image(tag, guid))
        test_rows.append((str(guid), "null"))
    write_post(data, "99999", "not listed anywhere", draw_image("neutral", 1))  # redundant
    write_list(root / "train.txt", train_rows)
    write_list(root / "test_without_label.txt", test_rows)
    return root


def write_post(data: Path, guid: str, text: str, image: Image.Image, gb18030: bool = False) -> None:
    if gb18030:
        text = "\u201c" + text + "\u201d\u3002"  # curly quotes and a CJK full stop: not UTF-8 once encoded
    (data / f"{guid}.txt").write_bytes(text.encode("gb18030" if gb18030 else "utf-8"))
    image.save(data / f"{guid}.jpg", format="JPEG")


def write_list(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("guid,tag\n" + "".join(f"{g},{t}\n" for g, t in rows), encoding="utf-8")


def make_bert_tokenizer(root: Path) -> str:
    """A BertTokenizer folder built from a tiny vocab.txt, in root; its path."""
    from transformers import BertTokenizer

    root.mkdir(parents=True, exist_ok=True)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TOKEN_WORDS, *"abcdefghijklmnopqrstuvwxyz"]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(str(root / "tok"))
    return str(root / "tok")


@pytest.fixture(scope="session")
def bert_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_bert_tokenizer(tmp_path_factory.mktemp("berttok"))


def bert_options(tokenizer: str, **extra) -> dict:
    """Options of the `bert` encoder for a tiny random BERT with the tokenizer of `bert_tokenizer`."""
    return {"pretrained": False, "tokenizer": tokenizer, "config": {**TINY, "vocab_size": 64, "max_position_embeddings": 64}, **extra}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSENT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One real training run of the default model, shared by the round-trip tests."""
    from mmsent.cli import main

    root = tmp_path_factory.mktemp("shared")
    data = make_dataset(root / "ds", per_class=14)
    run = root / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--quiet", "--preset", "default",
            "--set", "train.epochs=15", "--set", "data.val_fraction=0.25",
            "--set", f"runtime.cache_dir={root / 'cache'}"]
    assert main(args) == 0
    return data, run


@pytest.fixture(scope="session")
def clip_tokenizer(tmp_path_factory) -> str:
    """A CLIPTokenizer folder built from a tiny vocab.json + merges.txt (characters and a few words)."""
    from transformers import CLIPTokenizer

    root = tmp_path_factory.mktemp("cliptok")
    letters = list("abcdefghijklmnopqrstuvwxyz")
    tokens = letters + [c + "</w>" for c in letters] + ["lo", "lo</w>", "<|startoftext|>", "<|endoftext|>"]
    (root / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (root / "merges.txt").write_text("#version: 0.2\nl o\nl o</w>\n")
    tok = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    tok.save_pretrained(str(root / "tok"))
    return str(root / "tok")
