"""Is there more in the frozen networks than their final pooled features? Probed on the folds of `mmsent cv`.

Usage: python benchmarks/feature_probe.py --data ../shared/mvsa

`best` reads one vector per network: MiniLM's last layer mean-pooled, EfficientNet-Lite0's last feature map
average-pooled. This computes what else the same frozen networks give, once, for the 3,600 training posts
(about 7 minutes on 2 cores; kept under the feature cache folder's probe/ and reused):

- MiniLM's intermediate layers, each mean-pooled (`minilm_layer3`, `minilm_layer4`, and the mean of layers 1-6);
- EfficientNet-Lite0's intermediate stages, each average-pooled (`lite0_stage5` 112-d, `lite0_stage6` 192-d,
  `lite0_stage7` 320-d: the outputs of blocks 10, 14 and 15);
- its ImageNet class log-probabilities (`imagenet_logprob`, 1000-d, at weight 0.5);
- `best`'s image features L2-normalised instead of raw (`lite0_l2`);
- other views of the image: the whole image squashed to 224 x 224 instead of the centre crop (`lite0_whole`),
  a crop of the shorter side resized to 224 instead of 256 (`lite0_crop224`, less cut away), and the mean of
  the whole image's and the centre crop's features (`lite0_whole_and_crop`);

and adds each to `best`'s features (or, for the `_instead` rows, swaps it in for Lite0's) in the probe of benchmarks/ocr_text.py:
class-balanced logistic regressions, argmax, on the 5x2 folds `mmsent cv` uses. A probe of the features,
not a `mmsent cv` run of a model. Results: a Markdown table on stdout and benchmarks/results/feature_probe.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import torch
from ocr_text import probe  # the same probe as the OCR study
from PIL import Image

from mmsent.api import encode_labels, extract_features, load_training_data
from mmsent.config import load_config
from mmsent.data.images import open_image
from mmsent.encoders import create_encoder
from mmsent.encoders.efficientnet_lite import bundled_weights
from mmsent.encoders.minilm import mean_pool
from mmsent.experiments.cv import make_folds
from mmsent.stats import cv_interval

OUT = Path(__file__).resolve().parent / "results" / "feature_probe.json"
STAGE_ENDS = {"lite0_stage5": 10, "lite0_stage6": 14, "lite0_stage7": 15}  # last block of each stage


def minilm_layers(records, cfg) -> np.ndarray:
    """(N, 7, 384): the embeddings and each of the six layers of MiniLM, mean-pooled over the word pieces."""
    encoder = create_encoder("minilm")
    encoder.eval()
    load = encoder.item_loader(cfg)
    texts = [load(r) for r in records]
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            batch = encoder.collate(texts[start:start + 32])
            states = encoder.model(**batch, output_hidden_states=True).hidden_states  # 7 x (B, T, 384)
            mask = batch["attention_mask"].bool()
            out.append(torch.stack([mean_pool(h, mask) for h in states], 1).numpy())  # (B, 7, 384)
    return np.concatenate(out)


def lite0_stages(records, cfg) -> dict[str, np.ndarray]:
    """EfficientNet-Lite0's pooled intermediate stages and its ImageNet logits (N, 1000)."""
    from efficientnet_lite_pytorch import EfficientNet

    load = create_encoder("efficientnet_lite0").item_loader(cfg)
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(bundled_weights("lite0")))
    model.eval()
    grabbed: dict[str, torch.Tensor] = {}
    for name, block in STAGE_ENDS.items():
        model._blocks[block].register_forward_hook(lambda _m, _i, out, name=name: grabbed.__setitem__(name, out))
    out: dict[str, list[np.ndarray]] = {name: [] for name in [*STAGE_ENDS, "imagenet_logits"]}
    with torch.no_grad():
        for start in range(0, len(records), 32):
            logits = model(torch.stack([load(r) for r in records[start:start + 32]]))  # (B, 1000)
            for name in STAGE_ENDS:
                out[name].append(grabbed[name].mean(dim=(2, 3)).numpy())  # (B, C_stage)
            out["imagenet_logits"].append(logits.numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


def lite0_views(records) -> dict[str, np.ndarray]:
    """Lite0's pooled features of two other views of each image, with its own normalisation and input size."""
    encoder = create_encoder("efficientnet_lite0")
    encoder.eval()
    prep = encoder.preprocessing
    mean, std = torch.tensor(prep.mean).view(3, 1, 1), torch.tensor(prep.std).view(3, 1, 1)

    def view(record, name: str) -> torch.Tensor:
        image = open_image(record.image_path)
        if name == "lite0_whole":
            image = image.resize((prep.size, prep.size), Image.BILINEAR)  # all of it, aspect ratio lost
        else:  # the shorter side to the input size, then the centre crop
            scale = prep.size / min(image.size)
            image = image.resize([max(prep.size, round(side * scale)) for side in image.size], Image.BILINEAR)
            left, top = (image.size[0] - prep.size) // 2, (image.size[1] - prep.size) // 2
            image = image.crop((left, top, left + prep.size, top + prep.size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)  # (3, S, S)
        return (pixels - mean) / std

    out = {}
    with torch.no_grad():
        for name in ("lite0_whole", "lite0_crop224"):
            out[name] = np.concatenate([encoder(torch.stack([view(r, name) for r in records[start:start + 16]])).numpy()
                                        for start in range(0, len(records), 16)])  # (N, 1280)
    return out


def probe_features(records, cfg, cache: Path) -> dict[str, np.ndarray]:
    """The probed blocks, computed once and kept in `cache` (.npz)."""
    if cache.exists():
        return dict(np.load(cache))
    layers = minilm_layers(records, cfg)
    blocks = {"minilm_layer3": layers[:, 3], "minilm_layer4": layers[:, 4], "minilm_layers_mean": layers[:, 1:].mean(1),
              **lite0_stages(records, cfg), **lite0_views(records)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **blocks)
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/mvsa"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    torch.set_num_threads(2)
    cfg = load_config(preset="best")
    records = load_training_data(args.data, cfg).train
    y = encode_labels(records)
    names = list(cfg.model.encoders)
    features, _ = extract_features({n: create_encoder(n) for n in names}, records, cfg, quiet=True)
    features.update(probe_features(records, cfg, cfg.cache_path() / "probe" / "train_blocks_v2.npz"))
    features["imagenet_logprob"] = torch.log_softmax(torch.from_numpy(features["imagenet_logits"]), -1).numpy()
    image = features["efficientnet_lite0"]
    features["lite0_l2"] = image / np.linalg.norm(image, axis=1, keepdims=True)
    features["lite0_whole_and_crop"] = (features["lite0_whole"] + image) / 2
    weights = dict(cfg.model.feature_scale)
    added = ["minilm_layer3", "minilm_layer4", "minilm_layers_mean", *STAGE_ENDS]
    candidates = {"best_features": (names, weights)}
    candidates.update({f"plus_{b}": (names + [b], weights) for b in added})
    candidates["plus_imagenet_logprob_x0.5"] = (names + ["imagenet_logprob"], {**weights, "imagenet_logprob": 0.5})
    for swapped in ("lite0_l2", "lite0_whole", "lite0_crop224", "lite0_whole_and_crop"):
        candidates[f"{swapped}_instead"] = ([(swapped if n == "efficientnet_lite0" else n) for n in names], weights)
    candidates["plus_lite0_whole"] = (names + ["lite0_whole"], weights)

    folds = make_folds(records, 5, 2, 0)  # `mmsent cv`'s folds (its --seed defaults to 0)
    ratio = len(folds[0].held_out) / len(folds[0].train)
    scores = {name: [probe(features, blocks, w, y, f) for f in folds] for name, (blocks, w) in candidates.items()}
    rows = []
    print("| candidate | macro-F1 [95% CI] | accuracy [95% CI] | Δ macro-F1 vs best_features | Δ accuracy vs best_features |")
    print("|---|---|---|---|---|")
    for name, fold_scores in scores.items():
        row = {s: cv_interval([f[s] for f in fold_scores], ratio) for s in ("macro_f1", "accuracy", "weighted_f1")}
        deltas = {s: cv_interval([f[s] - r[s] for f, r in zip(fold_scores, scores["best_features"])], ratio)
                  for s in ("macro_f1", "accuracy")}
        shown = ["reference"] * 2 if name == "best_features" else [deltas[s].signed_text() for s in deltas]
        print(f"| {name} | {row['macro_f1'].text()} | {row['accuracy'].text()} | {shown[0]} | {shown[1]} |")
        rows.append({"candidate": name, **{k: dataclasses.asdict(v) for k, v in row.items()},
                     **{f"delta_{k}": dataclasses.asdict(v) for k, v in deltas.items()}})
    args.out.write_text(json.dumps({"folds": len(folds), "n": len(records), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
