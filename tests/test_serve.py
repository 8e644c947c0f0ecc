"""The prediction service: answers, batching, the OpenAPI description, and a 4xx JSON error for every bad input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from conftest import draw_image, make_dataset
from fastapi.testclient import TestClient

from mmsent import LABELS
from mmsent.cli import main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real model (VADER + EfficientNet-Lite0, 2 epochs) on the synthetic data set."""
    root = tmp_path_factory.mktemp("serve")
    data = make_dataset(root / "ds", per_class=8, n_test=3)
    run = root / "tiny"
    args = ["train", "--data", str(data), "--out", str(run), "--quiet",
            "--set", "model.encoders=[vader,efficientnet_lite0]", "--set", "train.epochs=2",
            "--set", f"runtime.cache_dir={root / 'cache'}"]
    assert main(args) == 0
    return run


@pytest.fixture(scope="module")
def client(tiny_run: Path) -> TestClient:
    from mmsent.serve.app import create_app

    # a 1 MB image limit, a 4 Mpx pixel limit and an 8 MB decode limit keep the bad-input fixtures small
    app = create_app(tiny_run, max_image_mb=1, max_text_chars=200, max_batch=4, max_image_pixels=4_000_000,
                     max_decode_mb=8)
    return TestClient(app)


def jpeg(tag: str = "positive", seed: int = 1, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    draw_image(tag, seed, size).save(buf, format="JPEG")
    return buf.getvalue()


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A tiny greyscale PNG whose header claims width x height pixels (400 Mpx): a decompression bomb."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * (width + 1) * 16)  # a few rows suffice: the header is what is checked
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def post(client: TestClient, image: bytes | None = None, text: str | None = "so happy today", name="a.jpg",
         kind="image/jpeg"):
    files = {"image": (name, image, kind)} if image is not None else None
    data = {"text": text} if text is not None else None
    if files is None:
        # force multipart even without a file part, as a browser form would
        return client.post("/predict", data=data or {}, files={"other": ("x.txt", b"x", "text/plain")})
    return client.post("/predict", files=files, data=data)


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word in detail, detail


def test_predict_returns_tag_probabilities_and_model(client: TestClient, tiny_run: Path):
    response = post(client, jpeg("positive"), "love this, so happy")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == tiny_run.name
    assert set(body["probabilities"]) == set(LABELS)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["tag"] == max(body["probabilities"], key=body["probabilities"].get)


def test_predict_matches_the_library_and_leaves_no_cache(client: TestClient, tiny_run: Path, tmp_path: Path):
    from mmsent.api import load_run
    from mmsent.data.records import Record

    image, text = jpeg("negative", 7), "terrible awful news"
    body = post(client, image, text).json()
    run = load_run(tiny_run)
    expected = run.predict_proba([Record("x", None, text, Path("<upload>"), image_bytes=image)], quiet=True, use_cache=False)[0]
    assert [body["probabilities"][lab] for lab in LABELS] == pytest.approx(expected.tolist(), abs=1e-5)
    assert not (tmp_path / "cache").exists()  # uploads never reach the user's feature cache


def test_batch_runs_pairs_in_order(client: TestClient):
    posts = [(jpeg("positive", 3), "so good"), (jpeg("negative", 4), "so angry"), (jpeg("neutral", 5), "bus schedule")]
    files = [("images", (f"{i}.jpg", img, "image/jpeg")) for i, (img, _) in enumerate(posts)]
    response = client.post("/predict/batch", files=files, data={"texts": [t for _, t in posts]})
    assert response.status_code == 200, response.text
    batch = response.json()["predictions"]
    singles = [post(client, img, text).json() for img, text in posts]
    assert len(batch) == 3
    for got, single in zip(batch, singles, strict=True):
        assert got["tag"] == single["tag"]
        assert got["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)


def test_health_model_and_openapi(client: TestClient, tiny_run: Path, tmp_path: Path):
    assert client.get("/health").json() == {"status": "ok", "model": tiny_run.name}
    info = client.get("/model").json()
    assert info["encoders"] == ["vader", "efficientnet_lite0"] and info["head"] == "linear"
    assert info["labels"] == list(LABELS) and info["preset"] is None
    assert 0 <= info["validation"]["macro_f1"] <= 1 and info["validation"]["n"] > 0
    assert info["limits"]["max_image_bytes"] == 1024 * 1024
    assert info["limits"]["max_decode_bytes"] == 8 * 1024 * 1024
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    assert {"200", "400", "413", "415", "422"} <= set(predict["responses"])
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Prediction")
    assert "multipart/form-data" in predict["requestBody"]["content"]
    assert {"/predict/batch", "/health", "/model"} <= set(spec["paths"])


def test_web_page_and_its_files_are_served(client: TestClient):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="image"' in page.text and 'id="text"' in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("neither image nor text", 422, ["send an image, a text, or both"]),
        ("empty image", 400, ["empty"]),
        ("not an image", 400, ["not an image format"]),
        ("truncated image", 400, ["cannot be decoded"]),
        ("too large", 413, ["over the limit"]),
        ("decompression bomb", 400, ["decompression bomb"]),
        ("costly to decode", 400, ["2000x1900 pixels (L)", "decoding it takes 18 MiB", "over the limit of 8 MiB"]),
        ("blank text", 400, ["empty"]),
        ("over-long text", 400, ["over the limit"]),
        ("text part as image", 415, ["not an image type"]),
    ],
)
def test_bad_input_is_a_4xx_json_error(client: TestClient, case: str, status: int, words: list[str]):
    good = jpeg()
    requests = {
        "neither image nor text": lambda: post(client, None, None),
        "empty image": lambda: post(client, b""),
        "not an image": lambda: post(client, b"%PDF-1.4 this is not an image at all"),
        "truncated image": lambda: post(client, good[: len(good) // 3]),
        "too large": lambda: post(client, good + b"\0" * (1024 * 1024), name="big.jpg"),
        "decompression bomb": lambda: post(client, png_bomb(), name="bomb.png", kind="image/png"),
        # 3.8 Mpx is under the pixel limit, but greyscale decoded then converted to RGB takes 5 bytes a pixel
        "costly to decode": lambda: post(client, png_bomb(2000, 1900), name="big.png", kind="image/png"),
        "blank text": lambda: post(client, good, "   \n  "),
        "over-long text": lambda: post(client, good, "a" * 201),
        "text part as image": lambda: post(client, b"hello", name="a.txt", kind="text/plain"),
    }
    assert_error(requests[case](), status, *words)


def test_each_side_alone_and_the_views_that_explain_the_answer(client: TestClient, tiny_run: Path):
    from mmsent.api import load_run
    from mmsent.data.records import Record

    run = load_run(tiny_run)
    image, text = jpeg("negative", 5), "so happy today, love it"

    def library(drop: set[str]) -> list[float]:
        record = Record("x", None, text, Path("<upload>"), image_bytes=image)
        return run.predict_proba([record], quiet=True, drop=frozenset(drop), use_cache=False)[0].tolist()

    both = post(client, image, text).json()
    assert both["inputs"] == ["text", "image"] and set(both["views"]) == {"text", "image"}
    for side, blanked in (("text", {"image"}), ("image", {"text"})):  # the other side blanked, as ablate does
        view = both["views"][side]
        assert [view["probabilities"][lab] for lab in LABELS] == pytest.approx(library(blanked), abs=1e-5)
        assert view["tag"] == max(view["probabilities"], key=view["probabilities"].get)
    assert both["explanation"].startswith(f"The text is {both['views']['text']['tag']}, "
                                          f"the image is {both['views']['image']['tag']}")

    text_only = post(client, None, text)  # no image part at all: a text-only post
    assert text_only.status_code == 200, text_only.text
    body = text_only.json()
    assert body["inputs"] == ["text"] and body["views"] == {}
    assert [body["probabilities"][lab] for lab in LABELS] == pytest.approx(library({"image"}), abs=1e-5)
    assert body["probabilities"] == both["views"]["text"]["probabilities"]
    assert "no image was sent" in body["explanation"] and "not trained with a side missing" in body["explanation"]

    for image_only in (post(client, image, None), post(client, image, "")):  # no text field, or an empty one
        assert image_only.status_code == 200, image_only.text
        body = image_only.json()
        assert body["inputs"] == ["image"] and body["probabilities"] == both["views"]["image"]["probabilities"]
        assert "no text was sent" in body["explanation"]

    plain = client.post("/predict?views=false", files={"image": ("a.jpg", image, "image/jpeg")}, data={"text": text})
    assert plain.json()["views"] == {} and plain.json()["probabilities"] == both["probabilities"]


def test_favicon(client: TestClient):
    assert 'rel="icon"' in client.get("/").text
    for path in ("/favicon.ico", "/static/favicon.svg"):
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")


def test_wrong_request_content_type_is_415(client: TestClient):
    assert_error(client.post("/predict", json={"image": "x", "text": "y"}), 415, "multipart/form-data")
    assert_error(client.post("/predict", content=b"raw", headers={"content-type": "image/jpeg"}), 415)
    assert_error(client.post("/predict/batch", data={"texts": ["a"]}), 415)


def test_oversized_body_is_refused_before_parsing(client: TestClient):
    body = b"x" * (3 * 1024 * 1024)
    response = client.post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=zz"})
    assert_error(response, 413, "over the limit")


def test_bad_batches(client: TestClient):
    one = ("images", ("a.jpg", jpeg(), "image/jpeg"))
    assert_error(client.post("/predict/batch", files=[one, one], data={"texts": ["a"]}), 400, "2 images and 1 texts")
    assert_error(client.post("/predict/batch", files=[one] * 5, data={"texts": ["a"] * 5}), 413, "limit of 4")
    bad = ("images", ("b.jpg", b"nope", "image/jpeg"))
    assert_error(client.post("/predict/batch", files=[one, bad], data={"texts": ["a", "b"]}), 400, "post 1", "b.jpg")
    assert_error(client.post("/predict/batch", files=[one], data={"texts": [" "]}), 400, "empty")


def test_service_survives_bad_input(client: TestClient):
    post(client, png_bomb())
    post(client, b"\xff\xd8\xff garbage")
    assert post(client, jpeg(), "great").status_code == 200


def test_serve_refuses_a_folder_that_is_not_a_run(tmp_path: Path):
    assert main(["serve", "--run", str(tmp_path), "--port", "0"]) == 2


# ---- the web page in a real browser ----

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def live_service(tiny_run: Path):
    """The app served by uvicorn on a free loopback port, in a thread; stopped after the test."""
    import socket
    import threading
    import time

    import uvicorn

    from mmsent.serve.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the OS picks a free port; uvicorn serves on this very socket
    server = uvicorn.Server(uvicorn.Config(create_app(tiny_run), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the service did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_web_page_in_chromium(live_service: str, tmp_path: Path):
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does) to run the browser test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is missing: pip install -e '.[dev]'")
    import httpx

    image = tmp_path / "post.jpg"
    image.write_bytes(jpeg("positive", 11, (128, 96)))
    text = "what a beautiful happy day"
    expected = httpx.post(f"{live_service}/predict", files={"image": ("post.jpg", image.read_bytes(), "image/jpeg")},
                          data={"text": text}, timeout=30).json()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 800, "height": 900},
        )
        try:
            page = browser.new_page()
            page.goto(live_service + "/")
            page.set_input_files("#image", str(image))
            page.fill("#text", text)
            page.click("#submit")
            page.wait_for_selector("#result:not([hidden])", timeout=20_000)
            shown_tag = page.text_content("#tag")
            bars = page.eval_on_selector_all(
                ".bar-row", "rows => rows.map(r => [r.dataset.label, r.querySelector('.bar-value').textContent,"
                " r.querySelector('.bar-fill').style.width])")
            thumb_width = page.eval_on_selector("#thumb", "img => img.hidden ? 0 : img.naturalWidth")
            views = page.eval_on_selector_all(".view-row", "rows => rows.map(r => [r.dataset.side, r.dataset.tag,"
                                              " r.querySelectorAll('.bar-fill').length])")
            explanation = page.text_content("#explanation")
            page.wait_for_function("document.getElementById('model-name').textContent.length > 0")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()

    assert shown_tag == expected["tag"]
    assert [label for label, _, _ in bars] == list(LABELS)
    for label, value, width in bars:
        assert value == f"{100 * expected['probabilities'][label]:.1f}%"
        assert float(width.rstrip("%")) == pytest.approx(float(value.rstrip("%")))  # bar length = probability
    assert thumb_width == 128  # the thumbnail shows the chosen image
    # the two one-side views: a small bar of three classes each, and the sentence saying which side drove it
    assert views == [[side, expected["views"][side]["tag"], 3] for side in ("text", "image")]
    assert explanation == expected["explanation"] and explanation.startswith("The text is ")
    assert (tmp_path / "page.png").stat().st_size > 10_000


# ---- bounded memory: decode cost, decoding once, uploads in memory ----


@pytest.mark.parametrize(
    "mode, transparency, per_pixel",
    [("RGB", False, 4), ("L", False, 5), ("P", False, 5), ("P", True, 9), ("RGBA", False, 8), ("LA", False, 12),
     ("I;16", False, 6), ("1", False, 5)],
)
def test_decode_cost_counts_the_decoded_image_and_its_rgb_copy(mode: str, transparency: bool, per_pixel: int):
    from PIL import Image

    from mmsent.data.images import decode_cost

    img = Image.new(mode, (30, 20))
    if transparency:
        img.info["transparency"] = 0
    assert decode_cost(img) == 30 * 20 * per_pixel  # Pillow pads RGB pixels to 4 bytes


def test_open_image_refuses_a_costly_image_before_decoding_it(monkeypatch: pytest.MonkeyPatch):
    from PIL import Image

    from mmsent.data.images import DEFAULT_MAX_DECODE_BYTES, ImageReadError, check_image_header, open_image

    def no_decoding(*args, **kwargs):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(Image, "_getdecoder", no_decoding)
    small_file = png_bomb(9400, 9400)  # the 10 KB PNG that took 430 MB to decode
    for check in (open_image, check_image_header):
        with pytest.raises(ImageReadError, match=r"9400x9400 pixels \(L\): decoding it takes 421 MiB, over the limit of 64 MiB"):
            check(small_file, max_decode_bytes=DEFAULT_MAX_DECODE_BYTES)
    # a 12-megapixel RGB photo fits the default limit
    assert check_image_header(jpeg(size=(4000, 3000)), max_decode_bytes=DEFAULT_MAX_DECODE_BYTES) == (4000, 3000)


def test_a_large_jpeg_counts_its_reduced_size_decode(client: TestClient):
    # 2400 x 1600 RGB is 15 MB at full size, over the 8 MB limit; the encoder decodes it at a quarter of that
    response = post(client, jpeg("positive", 2, size=(2400, 1600)), "so happy")
    assert response.status_code == 200, response.text


def test_each_upload_is_decoded_once(client: TestClient, monkeypatch: pytest.MonkeyPatch):
    from PIL import Image

    decoders = []
    real = Image._getdecoder
    monkeypatch.setattr(Image, "_getdecoder", lambda *args, **kwargs: decoders.append(args[1]) or real(*args, **kwargs))
    buf = io.BytesIO()
    draw_image("neutral", 3, (300, 200)).save(buf, format="PNG")
    assert post(client, buf.getvalue(), "bus schedule", name="a.png", kind="image/png").status_code == 200
    assert decoders == ["zip"]  # one PNG decode: the encoder's; the service only read the header


@pytest.fixture(scope="module")
def roomy_client(tiny_run: Path) -> TestClient:
    """The service with a 3 MB image limit: room for uploads over Starlette's 1 MB spooling threshold."""
    from mmsent.serve.app import create_app

    return TestClient(create_app(tiny_run, max_image_mb=3))


def test_uploads_up_to_the_limit_stay_in_memory(roomy_client: TestClient, monkeypatch: pytest.MonkeyPatch):
    import tempfile

    rolled = []
    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", lambda self: rolled.append(self))
    image = jpeg("positive", 5) + b"\0" * (2 * 1024 * 1024)  # a 2 MB upload (JPEG readers stop at its end)
    assert post(roomy_client, image, "so happy").status_code == 200
    files = [("images", (f"{i}.jpg", image, "image/jpeg")) for i in range(2)]
    assert roomy_client.post("/predict/batch", files=files, data={"texts": ["a", "b"]}).status_code == 200
    assert rolled == []  # no upload went to a temporary file on disk
    # one byte over the limit is refused while it is received, never spooled
    too_big = jpeg() + b"\0" * (3 * 1024 * 1024)
    assert_error(post(roomy_client, too_big, name="big.jpg"), 413, "image 'big.jpg'", "over the limit of 3,145,728 bytes")
    assert rolled == []


# ---- text encoding ----


def test_invalid_utf8_text_is_a_400(client: TestClient):
    assert_error(post(client, jpeg(), b"\xff\xfe bad"), 400, "text: is not valid UTF-8", "0xff at position 0")
    one = ("images", ("a.jpg", jpeg(), "image/jpeg"))
    response = client.post("/predict/batch", files=[one, one], data={"texts": ["fine", b"caf\xe9"]})
    assert_error(response, 400, "texts: is not valid UTF-8", "0xe9 at position 3")


def test_utf8_text_with_emoji_and_cjk_is_read_as_sent(client: TestClient, tiny_run: Path):
    from mmsent.api import load_run
    from mmsent.data.records import Record

    image, text = jpeg("positive", 9), "so happy 😊 今天很开心 #goodday"
    response = client.post("/predict", files={"image": ("a.jpg", image, "image/jpeg")}, data={"text": text.encode()})
    assert response.status_code == 200, response.text
    expected = load_run(tiny_run).predict_proba([Record("x", None, text, Path("<upload>"), image_bytes=image)],
                                                quiet=True, use_cache=False)[0]
    assert [response.json()["probabilities"][lab] for lab in LABELS] == pytest.approx(expected.tolist(), abs=1e-5)


# ---- a run without an image encoder: the service decodes the image itself ----


@pytest.fixture(scope="module")
def text_only_client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    from mmsent.serve.app import create_app

    root = tmp_path_factory.mktemp("serve-text")
    data = make_dataset(root / "ds", per_class=8, n_test=3)
    run = root / "vader"
    assert main(["train", "--data", str(data), "--out", str(run), "--quiet", "--set", "model.encoders=[vader]",
                 "--set", "train.epochs=2", "--set", f"runtime.cache_dir={root / 'cache'}"]) == 0
    return TestClient(create_app(run, max_decode_mb=8))


def test_a_text_only_run_still_checks_images(text_only_client: TestClient):
    good = jpeg()
    answer = post(text_only_client, good, "so happy").json()
    assert answer["inputs"] == ["text"] and answer["views"] == {}  # the image is checked, not read
    assert_error(post(text_only_client, good, None), 422, "this model reads text only; send the post's text")
    assert_error(post(text_only_client, good[: len(good) // 3]), 400, "cannot be decoded")
    assert_error(post(text_only_client, png_bomb(2000, 1900), name="big.png"), 400, "over the limit of 8 MiB")


# ---- the command line: limits, a port in use, quiet logging ----


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("--max-image-mb", "-1", ": -1 is not a positive size"),
        ("--max-image-mb", "0", ": 0 is not a positive size"),
        ("--max-image-mb", "ten", "'ten' is not a number"),
        ("--max-image-mb", "nan", "nan is not a positive size"),
        ("--max-decode-mb", "inf", "inf is not a positive size"),
        ("--port", "70000", "70000 is not a port number"),
        ("--port", "-1", "-1 is not a port number"),
        ("--batch-size", "0", "0 is below 1"),
        ("--batch-wait-ms", "-5", "-5 is not a wait"),
    ],
)
def test_serve_refuses_nonsensical_limits(option: str, value: str, words: str, tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--run", str(tmp_path), option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err and words in err and "Traceback" not in err


def test_library_limits_are_checked_too(tiny_run: Path):
    from mmsent.errors import MmsentError
    from mmsent.serve.app import Settings, create_app

    with pytest.raises(MmsentError, match="max_image_mb is -1; it must be a positive number of MB"):
        create_app(tiny_run, max_image_mb=-1)
    with pytest.raises(MmsentError, match="max_batch is 0"):
        Settings(max_batch=0)
    with pytest.raises(MmsentError, match="max_decode_bytes is 1.5"):
        Settings(max_decode_bytes=1.5)
    with pytest.raises(MmsentError, match="batch_size is 0"):
        Settings(batch_size=0)
    with pytest.raises(MmsentError, match="batch_wait_ms is -1"):
        Settings(batch_wait_ms=-1)


def test_serve_on_a_port_in_use_is_one_clear_error(tiny_run: Path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--run", str(tiny_run), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert "serving" not in out
    assert err.splitlines() == [f"mmsent: error: port {port} on 127.0.0.1 is in use "
                                "(another service, or mmsent serve already running); pass --port with a free port"]


def test_serve_prints_the_bound_port_and_quiet_logs_warnings_only(tiny_run: Path, tmp_path: Path):
    import os
    import subprocess
    import sys
    import time

    import httpx

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    log = tmp_path / "stderr.txt"
    with log.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "mmsent.cli", "serve", "--run", str(tiny_run), "--port", "0",
                                 "--quiet"], stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    try:
        line = proc.stdout.readline()  # printed once the port is bound and the model loaded
        assert line.startswith(f"serving {tiny_run.name} on http://127.0.0.1:"), line + log.read_text()
        url = line.split(" on ")[1].split()[0].rstrip("/")
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx.get(url + "/health", timeout=5).json()["status"] == "ok"
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(20)
    assert "INFO" not in log.read_text()  # neither uvicorn's start-up lines nor the request log


# ---- batching: concurrent requests share model calls ----


@pytest.fixture(scope="module")
def batching_client(tiny_run: Path) -> TestClient:
    """The service with a long batch window, so that concurrent requests surely meet in one batch."""
    from mmsent.serve.app import create_app

    return TestClient(create_app(tiny_run, batch_size=8, batch_wait_ms=500))


def concurrently(requests: list) -> list:
    """Send every request at once, each from its own thread; the responses in the same order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda send: send(), requests))


def test_concurrent_requests_share_model_calls_and_each_gets_its_own_answer(batching_client: TestClient,
                                                                             tiny_run: Path):
    from mmsent.api import load_run
    from mmsent.data.records import Record

    texts = ["so happy today", "bus schedule", "awful news", "love it", "a table", "so angry"]
    posts = [(jpeg(LABELS[i % 3], 20 + i), text) for i, text in enumerate(texts)]
    pair = [(jpeg("positive", 50), "great day"), (jpeg("negative", 51), "sad day")]
    batcher = batching_client.app.state.predictor.batcher
    before = batcher.calls
    files = [("images", (f"{i}.jpg", img, "image/jpeg")) for i, (img, _) in enumerate(pair)]
    responses = concurrently([lambda p=p: post(batching_client, *p) for p in posts] + [
        lambda: batching_client.post("/predict/batch", files=files, data={"texts": [t for _, t in pair]})])
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert batcher.calls - before <= 2  # 7 requests (8 posts) in one or two model calls, not 7
    got = [r.json() for r in responses[:-1]] + responses[-1].json()["predictions"]
    records = [Record(f"x{i}", None, text, Path("<upload>"), image_bytes=img) for i, (img, text) in enumerate(posts + pair)]
    expected = load_run(tiny_run).predict_proba(records, quiet=True, use_cache=False)
    for answer, probs in zip(got, expected, strict=True):
        assert [answer["probabilities"][lab] for lab in LABELS] == pytest.approx(probs.tolist(), abs=1e-5)


def test_a_bad_image_among_concurrent_requests_fails_only_its_own(batching_client: TestClient):
    good = [(jpeg("positive", 30 + i), "so happy") for i in range(3)]
    broken = jpeg("negative", 40)
    broken = broken[: len(broken) // 3]  # its header is whole: it fails when the encoder decodes it, in the batch
    responses = concurrently([lambda p=p: post(batching_client, *p) for p in good]
                             + [lambda: post(batching_client, broken, "so sad", name="bad.jpg")])
    assert [r.status_code for r in responses] == [200, 200, 200, 400]
    assert_error(responses[-1], 400, "image 'bad.jpg'", "cannot be decoded")
    assert not responses[-1].json()["detail"].startswith("post")  # a one-post request names no post index
    singles = [post(batching_client, *p).json() for p in good]
    assert [r.json()["probabilities"] for r in responses[:3]] == [s["probabilities"] for s in singles]


def test_health_and_model_answer_while_a_batch_runs(client: TestClient, monkeypatch: pytest.MonkeyPatch):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    run = client.app.state.predictor.run
    started, release = threading.Event(), threading.Event()
    real = run.features  # the model call of a batch: its encoders

    def held(*args, **kwargs):
        started.set()
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "features", held)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, client, jpeg(), "so happy")
        assert started.wait(60)
        t0 = time.monotonic()
        assert client.get("/health").status_code == 200 and client.get("/model").status_code == 200
        assert time.monotonic() - t0 < 5 and not pending.done()
        release.set()
        assert pending.result(60).status_code == 200
