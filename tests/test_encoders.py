"""Offline encoders, the registry and the feature cache."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mmsent.config import load_config
from mmsent.data.records import load_dataset
from mmsent.encoders import create_encoder, list_encoders
from mmsent.encoders.cache import FeatureCache
from mmsent.encoders.features import encode_records, encode_tokens
from mmsent.errors import ConfigError, WeightsNotFoundError


def test_registry_lists_and_rejects_unknown():
    assert {"minilm", "efficientnet_lite0", "vader"} <= set(list_encoders())
    with pytest.raises(ConfigError, match="unknown encoder 'nope'"):
        create_encoder("nope")


def test_vader_scores_sentiment():
    enc = create_encoder("vader")
    feats = enc(["I love this, wonderful!", "This is awful and sad."])  # (2, 4)
    assert feats.shape == (2, 4)
    assert feats[0, 3] > 0.5 > -0.5 > feats[1, 3]


def test_minilm_embeds_offline():
    enc = create_encoder("minilm")
    out = enc(enc.collate(["a happy dog", "a joyful puppy", "tax forms are due"]))
    assert out.shape == (3, 384)
    sim = out @ out.T
    assert sim[0, 1] > sim[0, 2]  # real pretrained weights, not random


def test_efficientnet_lite0_features():
    enc = create_encoder("efficientnet_lite0")
    assert enc.preprocessing.size == 224
    out = enc(torch.zeros(2, 3, 224, 224))
    assert out.shape == (2, 1280)


def test_efficientnet_trains_only_its_last_blocks_with_frozen_batch_norm():
    enc = create_encoder("efficientnet_lite0", pretrained=False, trainable_blocks=1, defer_network=True)
    enc.train()  # the network is built on first use, under the encoder's own train() rules
    last, head = enc.model._blocks[-1], enc.model._conv_head
    trained = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("model._blocks.15.", "model._conv_head.", "model._bn1.")) for n in trained)
    assert all(p.requires_grad for p in [*last.parameters(), *head.parameters()])
    assert not any(m.training for m in enc.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not enc.model._blocks[-2].training and last.training and enc.training
    before = enc.model._bn1.running_mean.clone()
    enc(torch.rand(2, 3, 224, 224)).sum().backward()
    assert torch.equal(before, enc.model._bn1.running_mean)  # statistics untouched by a training step
    assert enc.model._blocks[0]._depthwise_conv.weight.grad is None and last._project_conv.weight.grad is not None
    with pytest.raises(ConfigError, match="trainable_blocks must be 0 to 16"):
        create_encoder("efficientnet_lite0", pretrained=False, trainable_blocks=17)


def test_missing_weights_is_a_clear_message(tmp_path: Path):
    with pytest.raises(WeightsNotFoundError, match="no weights file"):
        create_encoder("efficientnet_lite0", weights_path=str(tmp_path / "none.pth"))
    with pytest.raises(WeightsNotFoundError, match="no model folder"):
        create_encoder("minilm", name_or_path=str(tmp_path / "none"))


def test_cache_computes_once_and_tracks_content(dataset: Path, tmp_path: Path):
    cfg = load_config()
    records = load_dataset(dataset).train[:8]
    enc = create_encoder("efficientnet_lite0")
    cache = tmp_path / "cache"
    first, stats1 = encode_records(enc, records, cfg, cache, quiet=True)
    second, stats2 = encode_records(enc, records, cfg, cache, quiet=True)
    assert stats1.computed == 8 and stats2.computed == 0 and stats2.cached == 8
    assert np.allclose(first, second)
    # changing one image's content invalidates exactly that entry
    from conftest import draw_image

    draw_image("negative", 777).save(records[0].image_path, format="JPEG")
    third, stats3 = encode_records(enc, records, cfg, cache, quiet=True)
    assert stats3.computed == 1 and not np.allclose(third[0], first[0]) and np.allclose(third[1:], first[1:])


def test_token_cache_keeps_valid_tokens_in_float16(dataset: Path, tmp_path: Path):
    cfg = load_config()
    records = load_dataset(dataset).train[:6]
    enc = create_encoder("minilm")
    cache = tmp_path / "cache"
    tokens, masks, stats1 = encode_tokens(enc, records, cfg, cache, quiet=True)
    distinct = len({enc.item_key(r, cfg) for r in records})  # posts with the same text are encoded once
    assert stats1.computed == distinct and tokens.shape[:2] == masks.shape and tokens.shape[2] == 384
    # what torch gives for each post alone, to float16 precision, padded with zeros past its own length
    for row, record in enumerate(records):
        alone, mask = enc.forward_tokens(enc.collate([enc.item_loader(cfg)(record)]))  # (1, T, 384): cleaned text
        length = int(mask.sum())
        assert masks[row].sum() == length and not tokens[row, length:].any()
        assert np.allclose(tokens[row, :length], alone[0, :length].detach().numpy(), atol=2e-2)
    FeatureCache.open(cache, "unused")  # other entries leave this one alone
    import mmsent.encoders.cache as cache_module

    cache_module._OPEN.clear()  # as a new process: read back from the shards on disk
    again, masks_again, stats2 = encode_tokens(enc, records, cfg, cache, quiet=True)
    assert stats2.computed == 0 and stats2.cached == 6 and np.array_equal(again, tokens) and np.array_equal(masks_again, masks)
    pooled, _ = encode_records(enc, records, cfg, cache, quiet=True)  # its own entry: not mistaken for tokens
    assert pooled.shape == (6, 384)


def test_text_cache_follows_cleaning(dataset: Path, tmp_path: Path):
    records = load_dataset(dataset).train[:5]
    enc = create_encoder("minilm")
    cache = tmp_path / "cache"
    encode_records(enc, records, load_config(), cache, quiet=True)
    _, same = encode_records(enc, records, load_config(), cache, quiet=True)
    _, changed = encode_records(enc, records, load_config(overrides=["text.hashtags_to_words=false"]), cache, quiet=True)
    assert same.computed == 0 and changed.computed > 0


def test_lexicon_reads_tweet_signals_from_the_raw_text():
    from mmsent.encoders.lexicon import FEATURES

    enc = create_encoder("lexicon")
    feats = enc(["Sooo happy today!!! :) #BestDayEver http://t.co/x", "RT @bob: awful news :( #worstdayever so sad..."])
    assert feats.shape == (2, len(FEATURES)) == (2, enc.dim)
    row = dict(zip(FEATURES, feats[0].tolist(), strict=True))
    assert row["exclamations"] == 3 and row["positive_emoticons"] == 1 and row["elongated_words"] == 1
    assert row["hashtags"] == 1 and row["links"] == 1 and row["hashtag_vader_compound"] > 0.3  # "Best Day Ever"
    sad = dict(zip(FEATURES, feats[1].tolist(), strict=True))
    assert sad["retweet"] == 1 and sad["negative_emoticons"] == 1 and sad["vader_compound"] < 0 and sad["ellipsis"] == 1
    assert sad["hashtag_vader_compound"] < 0  # "worst day ever", segmented


def test_e5_embeds_offline_and_deterministically():
    enc = create_encoder("e5")
    out = enc(["a happy dog", "a joyful puppy", "tax forms are due"])
    assert out.shape == (3, 384) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-3)
    sim = out @ out.T
    assert sim[0, 1] > sim[0, 2]
    assert torch.equal(out, enc(["a happy dog", "a joyful puppy", "tax forms are due"]))


def test_images_are_normalised_exactly_as_torchvision_does_it():
    """The looked-up normalisation gives torchvision's ToTensor + Normalize bit for bit."""
    from PIL import Image
    from torchvision import transforms as T

    from mmsent.data.images import NormalisedTensor

    pixels = np.random.default_rng(0).integers(0, 256, (37, 23, 3), dtype=np.uint8)
    pixels[0, 0], pixels[0, 1] = 0, 255  # both ends of the table
    img = Image.fromarray(pixels)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = NormalisedTensor(mean, std)(img)
    assert got.dtype == torch.float32 and got.shape == (3, 37, 23) and got.is_contiguous()
    assert torch.equal(got, T.Normalize(mean, std)(T.ToTensor()(img)))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_eval_images_are_resized_and_cropped_exactly_as_torchvision_does_it(interpolation: str):
    """Resize + CenterCrop without torchvision: the same pixels for portrait, landscape, odd, small and exact sizes."""
    from PIL import Image
    from torchvision import transforms as T

    from mmsent.data.images import ImagePreprocessing, eval_transform

    prep = ImagePreprocessing(size=224, resize=256, interpolation=interpolation)
    reference = T.Compose([T.Resize(256, interpolation=T.InterpolationMode(interpolation)), T.CenterCrop(224),
                           T.ToTensor(), T.Normalize(prep.mean, prep.std)])
    rng = np.random.default_rng(1)
    for width, height in [(640, 480), (480, 640), (257, 1001), (999, 333), (256, 256), (256, 300), (100, 60), (224, 224)]:
        img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        assert torch.equal(eval_transform(prep)(img), reference(img)), (width, height)
    small = ImagePreprocessing(size=224, resize=200, interpolation=interpolation)  # crop larger than the image: padded
    img = Image.fromarray(rng.integers(0, 256, (150, 180, 3), dtype=np.uint8))
    padded = T.Compose([T.Resize(200, interpolation=T.InterpolationMode(interpolation)), T.CenterCrop(224),
                        T.ToTensor(), T.Normalize(small.mean, small.std)])
    assert torch.equal(eval_transform(small)(img), padded(img))


def test_texts_are_encoded_in_batches_of_alike_lengths_and_returned_in_record_order(dataset: Path):
    import dataclasses

    base = load_dataset(dataset).train[0]
    lengths = [7, 1, 5, 9, 2, 8, 3, 6, 4]  # words
    records = [dataclasses.replace(base, guid=str(n), text=" ".join(["good"] * n)) for n in lengths]
    encoder = create_encoder("minilm")
    cfg = load_config(overrides=["runtime.text_batch_size=3", "runtime.backend=torch"])  # no export probes to see
    seen: list[list[int]] = []
    collate = encoder.collate

    def recording(items):
        seen.append([len(text) for text in items])
        return collate(items)

    encoder.collate = recording
    features, _ = encode_records(encoder, records, cfg, None, quiet=True)
    flat = [n for batch in seen for n in batch]
    assert [len(b) for b in seen] == [3, 3, 3] and flat == sorted(flat)  # the longest texts last, together
    encoder.collate = collate
    one_by_one = np.concatenate([encode_records(encoder, [r], cfg, None, quiet=True)[0] for r in records])
    np.testing.assert_allclose(features, one_by_one, atol=1e-5)  # each row is its record's, padding aside
