"""Fusion heads and the classifier: shapes, gradients, single-modality inputs, standardisation."""

import numpy as np
import pytest
import torch

from mmsent.config import load_config
from mmsent.data.records import load_dataset
from mmsent.errors import ConfigError
from mmsent.heads import create_head, list_heads
from mmsent.model import FusionClassifier


@pytest.mark.parametrize("layernorm", [False, True])
def test_concat_head_shape_and_gradients(layernorm: bool):
    head = create_head("concat", {"text": 8, "image": 5}, 3, hidden_dim=16, dropout=0.1, layernorm=layernorm)
    out = head({"text": torch.randn(4, 8), "image": torch.randn(4, 5)})
    assert out.shape == (4, 3)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_head_works_with_one_modality():
    head = create_head("concat", {"text": 8}, 3)
    assert head({"text": torch.randn(2, 8)}).shape == (2, 3)


def test_unknown_head():
    assert "concat" in list_heads()
    with pytest.raises(ConfigError, match="unknown head"):
        create_head("nope", {"text": 3}, 3)


def test_classifier_standardises_with_training_statistics():
    clf = FusionClassifier({"a": 3, "b": 2}, {"a": "text", "b": "image"}, "concat", {"hidden_dim": 4})
    train = {"a": np.random.default_rng(0).normal(5, 2, (50, 3)).astype(np.float32),
             "b": np.ones((50, 2), dtype=np.float32)}  # constant column: std falls back to 1
    clf.fit_scaler(train)
    grouped = clf.group_by_modality({k: torch.from_numpy(v) for k, v in train.items()})
    assert grouped["text"].shape == (50, 3) and grouped["image"].shape == (50, 2)
    assert torch.allclose(grouped["text"].mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(grouped["image"], torch.zeros(50, 2))


ALL_POOLED_HEADS = ["concat", "ln", "mlp", "gated", "late"]


@pytest.mark.parametrize("name", ALL_POOLED_HEADS)
def test_every_head_shape_gradients_and_single_modality(name: str):
    head = create_head(name, {"text": 8, "image": 5}, 3, hidden_dim=16, dropout=0.1)
    head.train()
    out = head({"text": torch.randn(4, 8), "image": torch.randn(4, 5)})
    assert out.shape == (4, 3)
    out.sum().backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    for modality, dim in (("text", 8), ("image", 5)):
        single = create_head(name, {modality: dim}, 3, hidden_dim=16)
        assert single({modality: torch.randn(2, dim)}).shape == (2, 3)


def test_late_head_weights_start_equal():
    head = create_head("late", {"text": 4, "image": 4}, 3)
    assert head.modality_weights() == {"image": 0.5, "text": 0.5}


def test_cross_attention_on_tokens_with_padding():
    head = create_head("cross_attention", {"text": 8, "image": 6}, 3, hidden_dim=16, dropout=0.0)
    text = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    image = torch.randn(2, 4, 6)
    feats = {"text": (text, mask), "image": (image, torch.ones(2, 4, dtype=torch.bool))}
    head.eval()
    out = head(feats)
    assert out.shape == (2, 3)
    out.sum().backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    assert not missing, missing
    # padded positions do not change the result
    text2 = text.clone()
    text2[0, 3:] = 100.0
    assert torch.allclose(head({"text": (text2, mask), "image": feats["image"]}), out, atol=1e-5)


def test_cross_attention_accepts_pooled_and_single_modality():
    head = create_head("cross_attention", {"text": 8, "image": 6}, 3, hidden_dim=16)
    assert head({"text": torch.randn(3, 8), "image": torch.randn(3, 6)}).shape == (3, 3)
    single = create_head("cross_attention", {"image": 6}, 3, hidden_dim=16)
    assert single({"image": (torch.randn(2, 4, 6), torch.ones(2, 4, dtype=torch.bool))}).shape == (2, 3)


def test_linear_head_with_lbfgs_is_a_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    from mmsent.config import TrainConfig
    from mmsent.engine.losses import make_loss
    from mmsent.engine.trainer import FeatureBatches, fit

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.7, size=300) > 0).astype(int) + (x[:, 2] > 1.0)
    c = 0.05
    sk = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, tol=1e-10).fit(x, y)
    clf = FusionClassifier({"f": 6}, {"f": "text"}, "linear", {"hidden_dim": 8, "dropout": 0.0, "layernorm": False})
    cfg = TrainConfig(optimizer="lbfgs", weight_decay=1.0 / (c * len(y)), epochs=5, patience=5, lbfgs_steps=100)
    batches = FeatureBatches({"f": x}, y, 64, shuffle=True)
    fit(clf, batches, FeatureBatches({"f": x}, y, 300, shuffle=False), make_loss("balanced", y, 3), cfg, quiet=True)
    weight = clf.heads[0].linear.weight.detach().numpy()
    # the same objective, the same optimum: sklearn's multinomial coefficients up to a shift shared by the classes
    assert np.allclose(weight - weight.mean(0), sk.coef_ - sk.coef_.mean(0), atol=2e-3)


def test_supervised_contrastive_loss_rewards_classes_that_cluster():
    from mmsent.engine.losses import supervised_contrastive_loss

    y = torch.tensor([0, 0, 1, 1, 2, 2])
    clustered = torch.eye(3)[y] + 0.01 * torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    mixed = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])]
    assert supervised_contrastive_loss(clustered, y) < supervised_contrastive_loss(mixed, y)
    lonely = torch.randn(3, 4, requires_grad=True)
    loss = supervised_contrastive_loss(lonely, torch.tensor([0, 1, 2]))  # no post has a partner: nothing to pull
    loss.backward()
    assert loss.item() == 0.0 and lonely.grad is not None and not lonely.grad.any()


@pytest.mark.parametrize("ensemble", [1, 2])
def test_auxiliary_losses_train_beside_the_head_and_are_not_saved(dataset, tmp_path, ensemble: int):
    import json

    from safetensors.torch import load_file

    from mmsent.api import load_run
    from mmsent.cli import main

    common = ["--data", str(dataset), "--quiet", "--preset", "mlp", "--set", "model.encoders=[vader,efficientnet_lite0]",
              "--set", "train.epochs=3", "--set", f"train.ensemble={ensemble}", "--set", "runtime.num_workers=0"]
    runs = {"plain": [], "unimodal_0.3": ["train.unimodal_loss=0.3"], "unimodal_1": ["train.unimodal_loss=1"],
            "supcon": ["train.supcon_loss=0.2"]}
    weights = {}
    for name, settings in runs.items():
        out = tmp_path / name
        assert main(["train", "--out", str(out), *common, *[a for s in settings for a in ("--set", s)]]) == 0
        weights[name] = load_file(str(out / "model.safetensors"))
    assert all(set(w) == set(weights["plain"]) for w in weights.values())  # the saved model is the head alone...
    # ...and each loss, at each weight, changes what the head learns (the auxiliary terms reach its weights)
    names = list(runs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert any(not torch.equal(weights[a][k], weights[b][k]) for k in weights[a] if k.startswith("heads.")), (a, b)
    aux = tmp_path / "unimodal_1"
    assert load_run(aux).predict_proba(load_dataset(dataset).test, quiet=True).shape[1] == 3
    assert json.loads((aux / "metrics.json").read_text())["n_train"] > 0


def test_auxiliary_losses_need_mini_batches():
    with pytest.raises(ConfigError, match="need train.mode=frozen and train.optimizer=adamw"):
        load_config(None, ["train.unimodal_loss=0.5"])  # the default trains with L-BFGS


def test_supcon_on_a_head_without_a_hidden_layer_is_a_clear_error(dataset, tmp_path):
    from mmsent.cli import main

    code = main(["train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--quiet", "--preset", "mlp",
                 "--set", "model.encoders=[vader,efficientnet_lite0]", "--set", "model.head=late",
                 "--set", "train.supcon_loss=0.1", "--set", "runtime.num_workers=0"])
    assert code == 2 and not (tmp_path / "run").exists()


def test_feature_batches_over_chosen_rows_join_into_the_full_batch_in_epoch_order():
    from mmsent.engine.trainer import FeatureBatches, full_batch

    x, y = np.arange(40, dtype=np.float32).reshape(20, 2), np.arange(20) % 3
    rows = np.array([3, 5, 7, 11, 13, 17, 19])
    batches, twin = (FeatureBatches({"f": x}, y, 3, shuffle=True, seed=4, rows=rows) for _ in range(2))
    joined = torch.cat([b["f"] for b, _ in list(batches)])
    features, labels = full_batch(twin)  # one copy, the same rows in the same order as an epoch's batches
    assert torch.equal(features["f"], joined) and sorted(features["f"][:, 0].tolist()) == (rows * 2).tolist()
    assert torch.equal(labels, torch.from_numpy(y)[features["f"][:, 0].long() // 2])
    assert len(batches) == 3


def test_a_linear_head_prepares_its_joined_inputs_once_for_lbfgs():
    from mmsent.engine.trainer import fixed_inputs
    from mmsent.model import FusionClassifier

    clf = FusionClassifier({"t": 4, "i": 3}, {"t": "text", "i": "image"}, "linear", {}, num_heads=2)
    feats = {"t": torch.randn(6, 4), "i": torch.randn(6, 3)}
    clf.fit_scaler({k: v.numpy() for k, v in feats.items()})
    member = clf.member(1)
    forward, prepared = fixed_inputs(member, feats)
    assert isinstance(prepared, torch.Tensor) and prepared.shape == (6, 7)  # joined once, not on every call
    assert torch.equal(forward(prepared), member(feats))


def test_bilinear_head_multiplies_whitened_components_fitted_on_training_features():
    from mmsent.engine.trainer import fixed_inputs

    rng = np.random.default_rng(0)
    feats = {"t": rng.normal(size=(200, 6)).astype(np.float32) @ rng.normal(size=(6, 6)).astype(np.float32),
             "i": rng.normal(2, 3, size=(200, 5)).astype(np.float32)}
    clf = FusionClassifier({"t": 6, "i": 5}, {"t": "text", "i": "image"}, "bilinear", {"rank": 3, "scale": 0.5},
                           num_heads=2)
    clf.fit_scaler(feats)
    head, twin = clf.heads
    groups = clf.group_by_modality({k: torch.from_numpy(v) for k, v in feats.items()})
    for modality in ("text", "image"):  # the training rows project onto uncorrelated unit-variance components
        z = (groups[modality] - getattr(head, f"center_{modality}")) @ getattr(head, f"project_{modality}")
        assert torch.allclose(torch.cov(z.T), torch.eye(3), atol=1e-3)
    joined = head.fuse(groups)
    assert joined.shape == (200, 11 + 9)
    assert torch.allclose(joined[:, 11:].std(0), torch.full((9,), 0.5), atol=1e-3)  # standardised, times scale
    assert all(torch.equal(a, b) for a, b in zip(head.buffers(), twin.buffers(), strict=True))  # fitted once, shared
    forward, prepared = fixed_inputs(clf.member(0), {k: torch.from_numpy(v) for k, v in feats.items()})
    assert prepared.shape == (200, 20) and torch.allclose(forward(prepared), clf.member(0)(
        {k: torch.from_numpy(v) for k, v in feats.items()}))
    assert create_head("bilinear", {"text": 6}, 3, rank=3)({"text": torch.randn(2, 6)}).shape == (2, 3)  # one side


def test_head_options_are_checked_against_the_head():
    with pytest.raises(ConfigError, match="head 'linear' takes no option 'rank'"):
        create_head("linear", {"text": 4, "image": 4}, 3, rank=2)
    with pytest.raises(ConfigError, match="rank 8 exceeds the 4 image features"):
        create_head("bilinear", {"text": 10, "image": 4}, 3, rank=8)


def test_a_bilinear_run_saves_its_projections_and_predicts_the_same_after_loading(dataset, tmp_path):
    from mmsent.api import load_run
    from mmsent.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", str(dataset), "--out", str(out), "--quiet", "--set", "model.encoders=[vader,efficientnet_lite0]",
                 "--set", "model.head=bilinear", "--set", "model.head_options={rank: 2, scale: 0.6}",
                 "--set", "train.ensemble=2", "--set", "runtime.num_workers=0"]) == 0
    run = load_run(out)
    head = run.model.classifier.heads[0]
    assert head.project_text.abs().sum() > 0 and head.product_std.ne(1).any()  # fitted values came back
    test = load_dataset(dataset).test
    assert np.allclose(run.predict_proba(test, quiet=True), load_run(out).predict_proba(test, quiet=True))
    code = main(["train", "--data", str(dataset), "--out", str(tmp_path / "bad"), "--quiet",
                 "--set", "model.head_options={depth: 2}", "--set", "model.encoders=[vader,efficientnet_lite0]"])
    assert code == 2 and not (tmp_path / "bad").exists()
