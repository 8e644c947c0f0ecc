"""The model zoo encoders (tfidf, resnet18, bert, clip, blip), offline with tiny random configurations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, bert_options

from mmsent import LABELS
from mmsent.cli import main
from mmsent.config import load_config
from mmsent.data.records import load_dataset
from mmsent.encoders import create_encoder
from mmsent.errors import MmsentError, WeightsNotFoundError

TINY_VISION = {**TINY, "image_size": 32, "patch_size": 8}


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """Fewer images than the shared fixture: the end-to-end runs encode them with a 224-px ResNet / ViT."""
    from conftest import make_dataset

    return make_dataset(tmp_path / "small", per_class=7, n_test=3)


def clip_options(tokenizer: str | None = None) -> dict:
    text = {**TINY, "vocab_size": 60, "max_position_embeddings": 32, "bos_token_id": 58, "eos_token_id": 59, "pad_token_id": 59}
    options = {"pretrained": False, "config": {"text_config": text, "vision_config": TINY_VISION, "projection_dim": 16}}
    return {**options, "tokenizer": tokenizer} if tokenizer else options


def blip_options(tokenizer: str | None = None) -> dict:
    text = {**TINY, "vocab_size": 64, "max_position_embeddings": 64}
    options = {"pretrained": False, "config": {"text_config": text, "vision_config": TINY_VISION, "image_text_hidden_size": 16}}
    return {**options, "tokenizer": tokenizer} if tokenizer else options


def images(encoder, n: int = 2) -> torch.Tensor:
    size = encoder.preprocessing.size
    return torch.randn(n, 3, size, size)


def assert_disjoint(*encoders) -> None:
    """Towers of one model own separate parameters (fine-tuning, saving and counting see each once)."""
    seen: set[int] = set()
    for encoder in encoders:
        ptrs = {t.data_ptr() for t in encoder.state_dict().values()}
        assert ptrs and not ptrs & seen
        seen |= ptrs


def grads_reach(encoder, out: torch.Tensor, min_share: float = 0.5) -> None:
    """A loss on the output gives a non-zero gradient to most backbone parameters (fine-tune mode)."""
    encoder.train()
    encoder.zero_grad()
    out.pow(2).sum().backward()
    params = [p for p in encoder.parameters() if p.requires_grad]
    with_grad = [p for p in params if p.grad is not None and p.grad.abs().sum() > 0]
    assert params and len(with_grad) / len(params) >= min_share


def test_tfidf_fits_on_training_records_and_round_trips(dataset: Path):
    cfg = load_config()
    records = load_dataset(dataset).train
    enc = create_encoder("tfidf", min_df=1)
    with pytest.raises(MmsentError, match="not fitted"):
        enc(["love it"])
    enc.fit(records, cfg)
    texts = [enc.item_loader(cfg)(r) for r in records[:5]]
    feats = enc(texts)
    assert feats.dtype == torch.float32 and feats.shape == (5, enc.dim) and enc.dim > 5
    state = json.loads(json.dumps(enc.extra_state_dict()))  # JSON-serialisable
    again = create_encoder("tfidf", min_df=1)
    again.load_extra_state_dict(state)
    assert again.dim == enc.dim and again.fingerprint() == enc.fingerprint()
    assert torch.equal(again(texts), feats)
    other = create_encoder("tfidf", min_df=1)
    other.fit(records[:10], cfg)  # other training texts: other state, other cache key
    assert other.fingerprint() != enc.fingerprint()
    with pytest.raises(MmsentError, match="fitted with"):
        create_encoder("tfidf", min_df=1, max_features=10).load_extra_state_dict(state)


def test_resnet18_random_shapes_tokens_gradients():
    enc = create_encoder("resnet18", pretrained=False)
    assert enc.preprocessing.size == 224 and enc.preprocessing.resize == 256
    assert enc.preprocessing.interpolation == "bilinear" and enc.preprocessing.mean == (0.485, 0.456, 0.406)
    x = torch.randn(2, 3, 64, 64)  # any size works; 224 gives 7x7 patches
    tokens, mask = enc.forward_tokens(x)
    assert tokens.shape == (2, 4, enc.token_dim) and mask.shape == (2, 4) and mask.all()
    grads_reach(enc, enc(x), min_share=0.9)
    assert enc(x).shape == (2, 512)
    # random init is reproducible (a rebuilt run gets the same network) and keyed by seed
    again = create_encoder("resnet18", pretrained=False)
    assert torch.equal(again.model.conv1.weight, enc.model.conv1.weight)
    assert create_encoder("resnet18", pretrained=False, seed=1).fingerprint() != enc.fingerprint()


def test_resnet18_missing_weights_message(tmp_path: Path, monkeypatch):
    from urllib.error import URLError

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsNotFoundError) as err:
        create_encoder("resnet18")
    text = str(err.value)
    assert "resnet18" in text and str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in text
    assert "model.encoder_options.resnet18.weights_path=" in text
    with pytest.raises(WeightsNotFoundError, match="no weights file"):
        create_encoder("resnet18", weights_path=str(tmp_path / "nope.pth"))


def test_resnet18_loads_a_local_weights_file(tmp_path: Path):
    from torchvision.models import resnet18

    path = tmp_path / "r18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    enc = create_encoder("resnet18", weights_path=str(path))
    assert "r18.pth" in enc.fingerprint()


def test_bert_tiny_random(bert_tokenizer: str):
    enc = create_encoder("bert", **bert_options(bert_tokenizer))
    batch = enc.collate(["love the photo", "so sad today"])
    assert enc(batch).shape == (2, 32) and enc.dim == 32
    tokens, mask = enc.forward_tokens(batch)
    assert tokens.shape == (2, batch["input_ids"].shape[1], enc.token_dim) and mask.dtype == torch.bool
    grads_reach(enc, enc(batch))
    mean = create_encoder("bert", **bert_options(bert_tokenizer, pooling="mean"))
    assert mean.fingerprint() != enc.fingerprint()
    assert create_encoder("bert", **bert_options(bert_tokenizer, seed=3)).fingerprint() != enc.fingerprint()
    # the same options rebuild the same random weights (the run folder's config is enough)
    again = create_encoder("bert", **bert_options(bert_tokenizer))
    enc.eval(), again.eval()
    assert torch.allclose(enc(batch), again(batch)) and again.fingerprint() == enc.fingerprint()


def test_clip_towers_tiny_random_share_one_model(clip_tokenizer: str):
    text = create_encoder("clip_text", **clip_options(clip_tokenizer))
    image = create_encoder("clip_image", **clip_options())
    assert text.shared_model is image.shared_model  # loaded once for both towers
    assert_disjoint(text, image)
    assert image.preprocessing.size == 32 and image.preprocessing.interpolation == "bicubic"
    assert image.preprocessing.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))  # from CLIPImageProcessor
    batch = text.collate(["love", "a cat"])
    assert text(batch).shape == (2, 16) and text.dim == 16
    tokens, mask = text.forward_tokens(batch)
    assert tokens.shape[0] == 2 and tokens.shape[2] == text.token_dim == 32 and mask.shape == tokens.shape[:2]
    x = images(image)
    assert image(x).shape == (2, 16)
    tokens, mask = image.forward_tokens(x)
    assert tokens.shape == (2, 1 + 16, image.token_dim) and mask.all()
    grads_reach(image, image(x), min_share=0.9)
    assert text.fingerprint() != image.fingerprint()


def test_blip_encoders_tiny_random(bert_tokenizer: str):
    text = create_encoder("blip_text", **blip_options(bert_tokenizer))
    image = create_encoder("blip_image", **blip_options())
    itm = create_encoder("blip_itm", **blip_options(bert_tokenizer))
    assert text.shared_model is image.shared_model and itm.modality == "multimodal"
    assert_disjoint(text, image, itm)
    assert image.preprocessing.size == 32 and image.preprocessing.interpolation == "bicubic"
    batch = text.collate(["love the photo", "sad"])
    out = text(batch)
    assert out.shape == (2, 16) and torch.allclose(out.norm(dim=-1), torch.ones(2))
    x = images(image)
    assert image(x).shape == (2, 16)
    assert image.forward_tokens(x)[0].shape == (2, 17, image.token_dim)
    pair = itm.collate([("love the photo", x[0]), ("sad", x[1])])
    fused = itm(pair)
    assert fused.shape == (2, itm.dim) and itm.dim == 32
    tokens, mask = itm.forward_tokens(pair)
    assert tokens.shape[:2] == mask.shape
    grads_reach(itm, fused, min_share=0.9)


def test_pretrained_from_local_folders(tmp_path: Path, bert_tokenizer: str, clip_tokenizer: str):
    """A local folder (save_pretrained layout) is a model name: weights, tokenizer and image processor from it."""
    from transformers import AutoTokenizer, CLIPImageProcessor

    bert = create_encoder("bert", **bert_options(bert_tokenizer, seed=5))
    bert.model.save_pretrained(tmp_path / "bert")
    AutoTokenizer.from_pretrained(bert_tokenizer).save_pretrained(tmp_path / "bert")
    loaded = create_encoder("bert", name_or_path=str(tmp_path / "bert"))
    batch = bert.collate(["love the photo"])
    bert.eval(), loaded.eval()
    assert torch.allclose(loaded(batch), bert(batch), atol=1e-6)
    assert "random" not in loaded.fingerprint()

    clip = create_encoder("clip_image", **clip_options(), seed=5)
    clip.shared_model.save_pretrained(tmp_path / "clip")
    AutoTokenizer.from_pretrained(clip_tokenizer).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                       image_std=[0.25] * 3).save_pretrained(tmp_path / "clip")
    image = create_encoder("clip_image", name_or_path=str(tmp_path / "clip"))
    text = create_encoder("clip_text", name_or_path=str(tmp_path / "clip"))
    assert text.shared_model is image.shared_model and text(text.collate(["love"])).shape == (1, 16)
    prep = image.preprocessing
    assert (prep.size, prep.resize, prep.mean, prep.std) == (32, 36, (0.5,) * 3, (0.25,) * 3)


@pytest.mark.parametrize(
    ("name", "default"),
    [("bert", "bert-base-uncased"), ("clip_text", "openai/clip-vit-base-patch32"), ("blip_image", "Salesforce/blip-itm-base-coco")],
)
def test_hf_missing_weights_message(name: str, default: str, tmp_path: Path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError) as err:
        create_encoder(name)
    text = str(err.value)
    assert default in text and str(tmp_path / "hf") in text
    assert f"model.encoder_options.{name}.name_or_path=" in text and f"hf download {default}" in text


def test_missing_weights_stop_the_command_with_exit_2(dataset: Path, tmp_path: Path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    code = main(["train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--quiet", "--set", "model.encoders=[bert]"])
    err = capsys.readouterr().err
    assert code == 2 and "bert-base-uncased" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_bad_options_are_config_errors():
    with pytest.raises(MmsentError, match="pooling"):
        create_encoder("bert", pooling="max")
    with pytest.raises(MmsentError, match="ngram_range"):
        create_encoder("tfidf", ngram_range=[2, 1])


def assert_run_restores_exactly(run: Path, dataset: Path) -> None:
    """The rebuilt encoders (fitted state, seeded random weights) recompute the saved validation probabilities."""
    import csv

    import numpy as np

    from mmsent.api import load_run

    loaded = load_run(run)
    rows = list(csv.DictReader((run / "val_predictions.csv").open()))
    by_guid = {r.guid: r for r in load_dataset(dataset).train}
    records = [by_guid[row["guid"]] for row in rows]
    probs = loaded.predict_features(loaded.features(records, quiet=True, use_cache=False))
    saved = np.array([[float(row[k]) for k in (f"p_{lab}" for lab in LABELS)] for row in rows])
    assert np.allclose(probs, saved, atol=1e-4)


def _train_predict(dataset: Path, run: Path, tmp_path: Path, sets: list[str]) -> list[str]:
    args = ["train", "--data", str(dataset), "--out", str(run), "--quiet", "--set", "train.epochs=3",
            "--set", "data.val_fraction=0.25",
            "--set", "runtime.encode_batch_size=8"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    assert_run_restores_exactly(run, dataset)
    out = tmp_path / f"{run.name}-pred.txt"
    assert main(["predict", "--run", str(run), "--data", str(dataset),
                 "--guids", str(dataset / "test_without_label.txt"), "--out", str(out), "--quiet"]) == 0
    return out.read_text().splitlines()


def test_train_and_predict_tfidf_resnet18(small_dataset: Path, tmp_path: Path):
    run = tmp_path / "run_tfidf"
    lines = _train_predict(small_dataset, run, tmp_path,
                           ["model.encoders=[tfidf,resnet18]", "model.encoder_options.resnet18.pretrained=false",
                            "model.encoder_options.tfidf.min_df=1"])
    assert lines[0] == "guid,tag" and len(lines) == 1 + 3
    saved = json.loads((run / "model.json").read_text())
    assert "tfidf" in json.dumps(saved) and "vocabulary" in json.dumps(saved)


def test_train_and_predict_tiny_bert_and_blip_fused(small_dataset: Path, tmp_path: Path, bert_tokenizer: str):
    """Random tiny transformers given by options only: the run folder's config rebuilds them exactly."""
    bert, blip = json.dumps(bert_options(bert_tokenizer)), json.dumps(blip_options(bert_tokenizer))
    run = tmp_path / "run_hf"
    lines = _train_predict(small_dataset, run, tmp_path,
                           ["model.encoders=[bert,blip_image,blip_itm]", f"model.encoder_options.bert={bert}",
                            f"model.encoder_options.blip_image={json.dumps(blip_options())}",
                            f"model.encoder_options.blip_itm={blip}"])
    assert len(lines) == 1 + 3 and all(line.split(",")[1] in ("positive", "neutral", "negative") for line in lines[1:])
    assert load_config(run / "config.yaml").model.encoder_options["blip_itm"]["config"]["image_text_hidden_size"] == 16


def test_core_encoders_give_token_features():
    minilm = create_encoder("minilm", pretrained=False)
    batch = minilm.collate(["love the photo", "so sad"])
    tokens, mask = minilm.forward_tokens(batch)
    assert tokens.shape == (2, batch["input_ids"].shape[1], minilm.token_dim) and mask.shape == tokens.shape[:2]
    lite = create_encoder("efficientnet_lite0", pretrained=False)
    tokens, mask = lite.forward_tokens(torch.randn(1, 3, 64, 64))  # 224 gives 7x7 = 49 patches
    assert tokens.shape == (1, 4, lite.token_dim) and mask.all()


def tiny_options(bert_tokenizer: str, clip_tokenizer: str) -> dict[str, dict]:
    """Offline, tiny stand-ins for every encoder a preset can name (the offline ones stay real)."""
    return {
        "tfidf": {"min_df": 1},
        "resnet18": {"pretrained": False},
        "bert": bert_options(bert_tokenizer),
        "clip_text": clip_options(clip_tokenizer),
        "clip_image": clip_options(),
        "blip_text": blip_options(bert_tokenizer),
        "blip_image": blip_options(),
        "blip_itm": blip_options(bert_tokenizer),
    }


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
@pytest.mark.parametrize("preset", sorted(__import__("mmsent.presets", fromlist=["PRESETS"]).PRESETS))
def test_every_preset_trains_and_predicts(preset: str, mode: str, small_dataset: Path, tmp_path: Path,
                                          bert_tokenizer: str, clip_tokenizer: str):
    options = tiny_options(bert_tokenizer, clip_tokenizer)
    encoders = load_config(preset=preset).model.encoders
    sets = [f"model.encoder_options.{name}={json.dumps(options[name])}" for name in encoders if name in options]
    run = tmp_path / f"{preset}-{mode}"
    args = ["train", "--preset", preset, "--data", str(small_dataset), "--out", str(run), "--quiet",
            "--set", "train.epochs=1", "--set", f"train.mode={mode}", "--set", "train.batch_size=8",
            "--set", "data.val_fraction=0.25", "--set", "runtime.num_workers=0", "--set", "train.ensemble=2"]
    if mode == "finetune":  # one model end to end, with AdamW (the offline models train an ensemble with L-BFGS)
        args += ["--set", "train.ensemble=1", "--set", "train.optimizer=adamw"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    assert load_config(run / "config.yaml").model.encoders == encoders
    assert (run / "encoders.safetensors").is_file() == (mode == "finetune")
    out = tmp_path / f"{preset}-{mode}.txt"
    assert main(["predict", "--run", str(run), "--data", str(small_dataset),
                 "--guids", str(small_dataset / "test_without_label.txt"), "--out", str(out), "--quiet"]) == 0
    assert len(out.read_text().splitlines()) == 1 + 3
