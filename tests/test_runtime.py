"""Inference backends of frozen encoders: ONNX exports checked against torch, the fallback, the export files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_zoo_encoders import bert_options, tiny_options

from mmsent.cli import main
from mmsent.config import Config, load_config
from mmsent.data.records import load_dataset
from mmsent.encoders import create_encoder, onnx_export
from mmsent.encoders.features import encode_records, prepare_inference
from mmsent.encoders.onnx_export import MAX_ABS_DIFF, export_path
from mmsent.errors import ConfigError

EXPORTABLE = ["minilm", "efficientnet_lite0", "efficientnet_lite2", "resnet18", "bert", "clip_text", "clip_image",
              "blip_text", "blip_image", "blip_itm"]


def backend_config(tmp_path: Path, backend: str = "onnx") -> Config:
    return load_config(overrides=[f"runtime.backend={backend}", f"runtime.cache_dir={tmp_path / 'cache'}",
                                  "runtime.num_workers=0"])


def tiny_encoder(name: str, bert_tokenizer: str, clip_tokenizer: str):
    """The encoder, offline: real weights where a package ships them, tiny random configurations elsewhere."""
    return create_encoder(name, **tiny_options(bert_tokenizer, clip_tokenizer).get(name, {})).eval()


def torch_features(encoder, batch) -> np.ndarray:
    with torch.inference_mode():
        return encoder(batch).float().numpy()


@pytest.mark.parametrize("name", EXPORTABLE)
def test_every_exportable_encoder_runs_in_onnx_runtime_as_in_torch(name: str, tmp_path: Path, bert_tokenizer: str,
                                                                    clip_tokenizer: str):
    encoder = tiny_encoder(name, bert_tokenizer, clip_tokenizer)
    expected = torch_features(encoder, encoder.collate(encoder.probe_items()))
    forward = prepare_inference(encoder, backend_config(tmp_path))
    assert forward.backend == "onnx"
    assert forward.path.parent == tmp_path / "cache" / "onnx" and forward.path.name.startswith(name)
    # another batch size than the export and the check saw (and, for texts, another length)
    items = encoder.probe_items()[::-1] * 2
    batch = encoder.collate(items)
    got = forward(batch)
    assert got.shape == (len(items), encoder.dim) and got.dtype == np.float32
    assert np.abs(got - torch_features(encoder, batch)).max() <= MAX_ABS_DIFF
    assert np.abs(forward(encoder.collate(encoder.probe_items())) - expected).max() <= MAX_ABS_DIFF


def test_torch_backend_exports_nothing_and_non_networks_stay_as_they_are(tmp_path: Path):
    lite = create_encoder("efficientnet_lite0")
    assert prepare_inference(lite, backend_config(tmp_path, "torch")).backend == "torch"
    assert prepare_inference(create_encoder("vader"), backend_config(tmp_path, "onnx")).backend == "torch"
    assert not (tmp_path / "cache" / "onnx").exists()


def test_backend_is_validated():
    with pytest.raises(ConfigError, match="runtime.backend"):
        load_config(overrides=["runtime.backend=tensorrt"])


def test_features_match_between_backends_and_share_the_cache(dataset: Path, tmp_path: Path):
    """Features of torch and onnx agree within 1e-4, so both read and write the same cache entries."""
    records = load_dataset(dataset).train[:6]
    lite = create_encoder("efficientnet_lite0")
    onnx_cfg, torch_cfg = backend_config(tmp_path / "a"), backend_config(tmp_path / "b", "torch")
    via_onnx, _ = encode_records(lite, records, onnx_cfg, onnx_cfg.cache_path(), quiet=True)
    via_torch, _ = encode_records(lite, records, torch_cfg, torch_cfg.cache_path(), quiet=True)
    assert np.abs(via_onnx - via_torch).max() <= MAX_ABS_DIFF
    _, stats = encode_records(lite, records, torch_cfg, onnx_cfg.cache_path(), quiet=True)
    assert stats.computed == 0  # the backend is not part of the cache key


def test_a_failed_export_falls_back_to_torch_and_says_so_once(tmp_path: Path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator\nmore detail")

    monkeypatch.setattr(onnx_export, "trace_to_onnx", broken)
    cfg = backend_config(tmp_path)
    for _ in range(2):
        encoder = create_encoder("efficientnet_lite0")
        forward = prepare_inference(encoder, cfg)
        assert forward.backend == "torch"
        batch = encoder.collate(encoder.probe_items())
        assert forward(batch).shape == (3, 1280)
    err = capsys.readouterr().err
    assert err.count("mmsent: note: encoder 'efficientnet_lite0': the ONNX export failed "
                     "(RuntimeError: unsupported operator); it runs in torch") == 1
    assert not list((tmp_path / "cache" / "onnx").glob("*"))  # nor a temp file left behind


def test_an_export_that_differs_from_torch_is_not_used(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(onnx_export, "probe_difference", lambda encoder, forward: 3e-3)
    assert prepare_inference(create_encoder("efficientnet_lite0"), backend_config(tmp_path)).backend == "torch"
    assert "differs from torch by 3.0e-03 on the probe batch (more than 1e-04); it runs in torch" in capsys.readouterr().err


def test_an_export_is_made_once_and_reused_by_later_processes(tmp_path: Path, monkeypatch):
    cfg = backend_config(tmp_path)
    first = prepare_inference(create_encoder("efficientnet_lite0"), cfg)
    stamp = first.path.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export", no_export)
    again = prepare_inference(create_encoder("efficientnet_lite0"), cfg)  # a new encoder: as in another process
    assert again.backend == "onnx" and again.path == first.path and first.path.stat().st_mtime_ns == stamp


def test_a_damaged_export_is_exported_anew(tmp_path: Path):
    cfg = backend_config(tmp_path)
    encoder = create_encoder("efficientnet_lite0")
    path = export_path(encoder, cfg.cache_path())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half an onnx file")
    assert prepare_inference(encoder, cfg).backend == "onnx"
    assert path.stat().st_size > 1_000_000


def test_concurrent_exports_never_leave_a_partial_file(tmp_path: Path, monkeypatch):
    """A second exporter (another process) finishing while the first is still writing: both files are whole."""
    encoder = create_encoder("efficientnet_lite0").eval()
    path = export_path(encoder, tmp_path)
    real = onnx_export.trace_to_onnx
    seen = []

    def interleaved(module, named, target):
        real(module, named, target)
        if not seen:
            seen.append(path.exists())  # the first exporter's output is not at the final path yet
            onnx_export.export(encoder, path)  # the other exporter, from start to end
            seen.append(path.stat().st_size)

    monkeypatch.setattr(onnx_export, "trace_to_onnx", interleaved)
    onnx_export.export(encoder, path)
    assert seen[0] is False and seen[1] == path.stat().st_size
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files
    assert onnx_export.checked_forward(encoder, path, threads=1).backend == "onnx"


def test_a_fine_tuned_encoder_gets_its_own_export(tmp_path: Path, bert_tokenizer: str):
    cfg = backend_config(tmp_path)
    encoder = create_encoder("bert", **bert_options(bert_tokenizer))
    named = prepare_inference(encoder, cfg)
    with torch.no_grad():
        encoder.model.embeddings.word_embeddings.weight.mul_(2)  # what fine-tuning does: other weights...
    encoder.tuned_digest = "0123456789abcdef"  # ...under another digest
    tuned = prepare_inference(encoder, cfg)
    assert tuned.backend == "onnx" and tuned.path != named.path
    batch = encoder.collate(encoder.probe_items())
    assert np.abs(tuned(batch) - torch_features(encoder, batch)).max() <= MAX_ABS_DIFF


@pytest.mark.parametrize("trained_with", ["torch", "onnx"])
def test_a_run_trained_with_one_backend_predicts_the_same_tags_with_the_other(trained_with: str, tmp_path: Path):
    from conftest import make_dataset

    from mmsent.api import load_run

    data = make_dataset(tmp_path / "ds", per_class=8, n_test=6)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--quiet",
                 "--set", "model.encoders=[minilm,efficientnet_lite0,vader]", "--set", "train.ensemble=2",
                 "--set", "data.val_fraction=0.25", "--set", f"runtime.backend={trained_with}",
                 "--set", f"runtime.cache_dir={tmp_path / 'cache'}"]) == 0
    records = load_dataset(data).test + load_dataset(data).train
    probs = {}
    for backend in ("torch", "onnx"):
        loaded = load_run(run, backend=backend)
        assert {prepare_inference(loaded.encoders[n], loaded.cfg).backend for n in ("minilm", "efficientnet_lite0")} == {backend}
        probs[backend] = loaded.predict_proba(records, quiet=True, use_cache=False)  # computed, not read from a cache
    assert (probs["torch"].argmax(1) == probs["onnx"].argmax(1)).all()
    assert np.abs(probs["torch"] - probs["onnx"]).max() < 1e-3
    assert json.loads((run / "model.json").read_text())["encoder_dims"]["minilm"] == 384


def test_image_and_text_encoders_overlap_and_give_the_features_of_one_after_the_other(dataset: Path, tmp_path: Path,
                                                                                      monkeypatch, capsys):
    """The service's setting (onnx, no loader processes) encodes the image in a second thread: same features."""
    import threading

    from mmsent import api

    records = load_dataset(dataset).train[:6]
    encoders = {name: create_encoder(name).eval() for name in ("minilm", "efficientnet_lite0", "vader")}
    threads_seen: dict[str, str] = {}
    real = api.encode_records

    def recording(encoder, *args, **kwargs):
        threads_seen[encoder.name] = threading.current_thread().name
        return real(encoder, *args, **kwargs)

    monkeypatch.setattr(api, "encode_records", recording)
    overlapped = backend_config(tmp_path / "a")
    assert api.overlaps_encoders(overlapped)
    before = torch.get_num_threads()
    feats, stats = api.extract_features(encoders, records, overlapped, quiet=True, use_cache=False)
    assert torch.get_num_threads() == before  # the threads setting is put back
    assert "runs in torch" not in capsys.readouterr().err  # both exports, made at once in two threads, worked
    assert threads_seen["efficientnet_lite0"].startswith("mmsent-images")
    assert threads_seen["minilm"] == threads_seen["vader"] == threading.current_thread().name
    assert list(feats) == list(encoders) and [s.encoder for s in stats] == list(encoders)
    sequential = backend_config(tmp_path / "b").with_values({"runtime.num_workers": 1})
    assert not api.overlaps_encoders(sequential)
    expected, _ = api.extract_features(encoders, records, sequential, quiet=True, use_cache=False)
    for name in encoders:
        assert np.abs(feats[name] - expected[name]).max() <= 1e-6  # both ran in ONNX Runtime (or both in torch)


def test_torch_threads_blocks_overlapping_in_two_threads_restore_the_setting():
    import threading

    from mmsent.encoders.runtime import torch_threads

    before = torch.get_num_threads()
    inner_open, outer_may_close = threading.Event(), threading.Event()

    def other():
        with torch_threads(3):
            inner_open.set()
            outer_may_close.wait(5)

    with torch_threads(1):
        thread = threading.Thread(target=other)
        thread.start()
        inner_open.wait(5)
        with torch_threads(2):  # nested in this thread: gives back this block's setting on closing
            pass
    outer_may_close.set()  # the other thread's block closes last
    thread.join()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(("cores", "setting", "expected"), [(2, None, 0), (3, None, 0), (4, None, 1), (16, None, 4),
                                                            (2, 1, 1), (16, 0, 0)])
def test_image_loader_processes_default_to_one_per_four_cores(cores: int, setting, expected: int, monkeypatch):
    """On 2 cores a decoding process of its own slowed encoding (13.2 vs 10.2 s per 1,000 images): none there."""
    from mmsent.encoders import runtime

    monkeypatch.setattr(runtime, "available_cores", lambda: cores)
    assert runtime.loader_processes(load_config(overrides=[f"runtime.num_workers={'null' if setting is None else setting}"])) == expected


def test_a_run_carries_its_verified_exports_and_predicts_without_building_torch_encoders(tmp_path: Path):
    from conftest import make_dataset

    from mmsent.api import load_run
    from mmsent.run_folder import RunFolder

    data = make_dataset(tmp_path / "ds", per_class=8, n_test=6)
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert main(["train", "--data", str(data), "--out", str(run), "--quiet",
                 "--set", "model.encoders=[minilm,efficientnet_lite0,vader]", "--set", "train.ensemble=2",
                 "--set", "data.val_fraction=0.25", "--set", f"runtime.cache_dir={cache}"]) == 0
    exports = RunFolder.open(run).exports()
    assert set(exports) == {"minilm", "efficientnet_lite0"}  # VADER is no network
    for entry in exports.values():
        assert (run / entry["file"]).samefile(next((cache / "onnx").glob(f"*{Path(entry['file']).stem}*")))
    records = load_dataset(data).test
    expected = load_run(run, backend="torch").predict_proba(records, quiet=True, use_cache=False)
    loaded = load_run(run)
    probs = loaded.predict_proba(records, quiet=True, use_cache=False)
    assert np.abs(probs - expected).max() < 1e-3
    for name in exports:  # ONNX Runtime ran the run's files; no torch network was built for them
        assert "model" not in loaded.encoders[name]._modules
        assert prepare_inference(loaded.encoders[name], loaded.cfg).path == run / exports[name]["file"]
    # the torch network is still there for whatever needs it, built on first use
    assert loaded.encoders["minilm"].forward_tokens(loaded.encoders["minilm"].collate(["so happy"]))[0].shape[-1] == 384


def test_a_damaged_export_in_a_run_is_refused(tmp_path: Path):
    from conftest import make_dataset

    from mmsent.api import load_run
    from mmsent.errors import MmsentError

    data = make_dataset(tmp_path / "ds", per_class=6, n_test=2)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--quiet", "--set", "model.encoders=[efficientnet_lite0]",
                 "--set", "train.ensemble=2", "--set", f"runtime.cache_dir={tmp_path / 'cache'}"]) == 0
    export = run / "exports" / "efficientnet_lite0.onnx"
    data_bytes = bytearray(export.read_bytes())
    export.unlink()  # a new file: the cache's hard link keeps the original
    data_bytes[-1] ^= 0xFF
    export.write_bytes(bytes(data_bytes))
    with pytest.raises(MmsentError, match="SHA-256 does not match"):
        load_run(run)
    assert load_run(run, backend="torch").predict_proba(load_dataset(data).test, quiet=True) is not None


def test_predicting_from_a_run_with_exports_imports_no_model_code(tmp_path: Path):
    """A fresh process predicts from the run's exports without transformers' BERT code, torchvision or TextBlob
    being imported before the lexicon needs it: the start-up that `predict` and `serve` save."""
    import os
    import subprocess
    import sys

    from conftest import make_dataset

    data = make_dataset(tmp_path / "ds", per_class=6, n_test=4)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--quiet", "--set", "model.encoders=[minilm,efficientnet_lite0]",
                 "--set", "train.ensemble=2", "--set", f"runtime.cache_dir={tmp_path / 'cache'}"]) == 0
    script = f"""
import sys
from pathlib import Path
from mmsent.api import load_run
from mmsent.data.records import load_dataset
run = load_run(Path({str(run)!r}))
probs = run.predict_proba(load_dataset(Path({str(data)!r})).test, quiet=True)
assert probs.shape == (4, 3), probs.shape
heavy = [m for m in ("transformers.models.bert.modeling_bert", "torchvision") if m in sys.modules]
print("HEAVY", heavy)
"""
    env = {**os.environ, "MMSENT_CACHE": str(tmp_path / "empty-cache")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY []" in done.stdout


def test_frozen_training_frees_what_encoding_held_and_predicting_opens_the_checked_exports_again(tmp_path: Path):
    from conftest import make_dataset

    from mmsent.api import LoadedRun, create_encoders, fit_model, split_records

    data = make_dataset(tmp_path / "ds", per_class=8, n_test=6)
    cfg = load_config(overrides=["model.encoders=[minilm,efficientnet_lite0,vader]", "train.ensemble=2",
                                 "data.val_fraction=0.25", f"runtime.cache_dir={tmp_path / 'cache'}",
                                 "runtime.num_workers=0"])
    dataset = load_dataset(data)
    train, val = split_records(dataset.train, cfg)
    encoders = create_encoders(cfg)
    fitted = fit_model(cfg, train, val, quiet=True, encoders=encoders, encode_also=dataset.test)
    networks = ("minilm", "efficientnet_lite0")
    for name in networks:  # ONNX Runtime encoded them: neither their sessions nor their torch networks stay
        assert "model" not in encoders[name]._modules
        assert [f.session for f in encoders[name]._frozen_forwards.values()] == [None]
    assert fitted.metrics["parameters"] > 22_000_000  # counted with the networks, before they went
    assert fitted.metrics["encoder_cache"]["minilm"]["computed"] >= len(dataset.test)  # the test list came along
    loaded = LoadedRun(None, cfg, fitted.model)
    cached = loaded.predict_proba(dataset.test, quiet=True)  # read back: nothing encoded, nothing opened
    assert all(f.session is None for n in networks for f in encoders[n]._frozen_forwards.values())
    computed = loaded.predict_proba(dataset.test, quiet=True, use_cache=False)  # the same exports, opened again
    assert all(f.session is not None for n in networks for f in encoders[n]._frozen_forwards.values())
    assert all("model" not in encoders[n]._modules for n in networks)  # no second check against torch
    assert np.abs(cached - computed).max() < 1e-5


def test_a_released_export_that_went_away_is_a_clear_error(tmp_path: Path):
    from mmsent.encoders.features import release_inference
    from mmsent.errors import MmsentError

    cfg = backend_config(tmp_path)
    encoder = create_encoder("efficientnet_lite0")
    forward = prepare_inference(encoder, cfg)
    release_inference(encoder)
    forward.path.unlink()  # a cache cleared while the command ran
    with pytest.raises(MmsentError, match="cannot be opened again"):
        forward(torch.zeros(1, 3, 224, 224))
