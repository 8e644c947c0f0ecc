"""The prediction service: a FastAPI app around one trained run, loaded once, with a small web page."""

from __future__ import annotations

import errno
import functools
import io
import math
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import parse_options_header

from mmsent import LABELS, __version__
from mmsent.data.images import DEFAULT_MAX_DECODE_BYTES, ImageReadError, check_image_header, open_image
from mmsent.data.records import Record
from mmsent.errors import DataError, MmsentError
from mmsent.run_folder import RunFolder
from mmsent.serve.batching import MicroBatcher

STATIC_DIR = Path(str(files("mmsent.serve") / "static"))
UPLOAD_PATH = Path("<upload>")  # uploads live in memory; this only names them in messages
IMAGE_PART_TYPES = ("image/", "application/octet-stream")
MULTIPART_MARGIN = 1 << 20  # room for the text fields and multipart boundaries, in bytes
CHECK_DRAFT_PX = 256  # JPEG draft size of the service's own check decode (runs without an image encoder)
MIB = 1024 * 1024
DECODE_SLOTS = 2  # concurrent image decodes in the service: the cores of a small server
SIDES = ("text", "image")  # the modalities a post can have


# ---- response models (they are the OpenAPI description) ----


class ErrorResponse(BaseModel):
    """Every error the service answers itself: one readable sentence."""

    detail: str = Field(examples=["image: the upload is not an image (cannot identify image file)"])


class View(BaseModel):
    """What the same model says from one side of the post alone."""

    tag: Literal["negative", "neutral", "positive"]
    probabilities: dict[str, float]


class Prediction(BaseModel):
    tag: Literal["negative", "neutral", "positive"] = Field(description="the class with the highest probability")
    probabilities: dict[str, float] = Field(
        description="calibrated probability of each class (they sum to 1)",
        examples=[{"negative": 0.1, "neutral": 0.2, "positive": 0.7}],
    )
    model: str = Field(description="name of the model (its run folder)")
    inputs: list[Literal["text", "image"]] = Field(
        default_factory=list, description="the sides of the post the answer read (a side the model does not read is not one)"
    )
    views: dict[str, View] = Field(
        default_factory=dict,
        description="the same model reading the text alone and the image alone (the other side blanked to its "
        "training mean, as `mmsent ablate` does): which side drove the answer. Empty when the post or the model has "
        "one side, or when the request asks for no views",
    )
    explanation: str = Field("", description="one sentence: what each side says, or how a missing side was handled")


class BatchPrediction(BaseModel):
    predictions: list[Prediction] = Field(description="one prediction per (image, text) pair, in request order")
    model: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str


class ClassMetrics(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class ValidationMetrics(BaseModel):
    n: int = Field(description="validation examples")
    accuracy: float
    macro_f1: float
    macro_precision: float
    macro_recall: float
    roc_auc_ovr_macro: float | None = None
    per_class: dict[str, ClassMetrics] = Field(default_factory=dict)
    best_epoch: int | None = None


class Limits(BaseModel):
    max_image_bytes: int
    max_image_pixels: int
    max_decode_bytes: int = Field(
        description="memory one image may need to be decoded and converted to RGB (width x height x bytes per "
        "pixel, from its header; JPEGs count their reduced-size decode); larger images are refused with a 400"
    )
    max_text_chars: int
    max_batch: int


class ModelInfo(BaseModel):
    name: str
    preset: str | None = Field(None, description="the preset the run was trained from, when it names one")
    encoders: list[str]
    head: str
    labels: list[str]
    mmsent_version: str
    validation: ValidationMetrics | None = Field(None, description="metrics on the run's validation split, as training recorded them")
    limits: Limits


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "bad image or text"},
    422: {"model": ErrorResponse, "description": "neither an image nor a text (or only a side the model does not read)"},
    413: {"model": ErrorResponse, "description": "image or request over the size limit"},
    415: {"model": ErrorResponse, "description": "not a multipart/form-data request, or an image part that is not an image type"},
}


# ---- the service ----


@dataclass(frozen=True)
class Settings:
    """The service's limits; each must be a positive number."""

    max_image_bytes: int = 10 * 1024 * 1024
    max_text_chars: int = 2000
    max_batch: int = 32
    max_image_pixels: int | None = None  # None: the run's data.max_image_pixels
    # a few decodes of this size at once fit a 2-core server with a few GB (see images.DEFAULT_MAX_DECODE_BYTES)
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
    decode_slots: int = DECODE_SLOTS
    # concurrent requests' posts run through the model together: at most batch_size posts, gathered for at
    # most batch_wait_ms after the first (a model call costs much more than a few milliseconds of waiting)
    batch_size: int = 16
    batch_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_text_chars", "max_batch", "max_image_pixels", "max_decode_bytes", "decode_slots",
                     "batch_size"):
            value = getattr(self, name)
            if value is None and name == "max_image_pixels":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MmsentError(f"service limit {name} is {value!r}; it must be a whole number of at least 1")
        wait = self.batch_wait_ms
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not math.isfinite(wait) or wait < 0:
            raise MmsentError(f"service setting batch_wait_ms is {wait!r}; it must be a number of milliseconds, 0 or more")

    def body_limit(self, path: str) -> int | None:
        """Largest request body accepted on path, checked before it is read (None: no body expected)."""
        if path == "/predict":
            return self.max_image_bytes + MULTIPART_MARGIN
        if path == "/predict/batch":
            return self.max_batch * (self.max_image_bytes + MULTIPART_MARGIN)
        return None


class BodySizeLimit:
    """ASGI middleware: refuse an oversized body with 413 before it is parsed or spooled to disk."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        limit = self.settings.body_limit(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None:
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            response = JSONResponse({"detail": f"request body is {int(length):,} bytes, over the limit of {limit:,}"}, 413)
            return await response(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:  # chunked upload without a Content-Length
                raise HTTPException(413, f"request body is over the limit of {limit:,} bytes")
            return message

        return await self.app(scope, counting_receive, send)


class UploadTooLarge(MultiPartException):
    """A file part over the image size limit, refused while it is being received."""


class InMemoryMultiPartParser(MultiPartParser):
    """Starlette's multipart parser, but file parts stay in memory up to max_file_bytes (a larger one is
    refused, never spooled to disk) and text fields must be valid in the declared charset (UTF-8 by default)
    instead of being read as Latin-1."""

    def __init__(self, *args: Any, max_file_bytes: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # an instance attribute: Starlette's class-wide 1 MB stays as it is for everyone else
        self.spool_max_size = max_file_bytes
        self._file_bytes = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._file_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is not None:
            self._file_bytes += end - start
            if self._file_bytes > self.spool_max_size:
                raise UploadTooLarge(
                    f"image {part.file.filename or 'image'!r}: over the limit of {self.spool_max_size:,} bytes; "
                    "send a smaller image"
                )
        super().on_part_data(data, start, end)

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode(self._charset)
            except UnicodeDecodeError as exc:
                raise MultiPartException(
                    f"{part.field_name}: is not valid {self._charset.upper().replace('_', '-')} (byte "
                    f"0x{part.data[exc.start]:02x} at position {exc.start}); send the text encoded as UTF-8"
                ) from None
        super().on_part_end()


class InMemoryFormRequest(Request):
    """A request whose multipart form is parsed by InMemoryMultiPartParser; other bodies as Starlette does."""

    def __init__(self, scope, receive, max_file_bytes: int):
        super().__init__(scope, receive)
        self.max_file_bytes = max_file_bytes

    async def _get_form(
        self, *, max_files: int | float = 1000, max_fields: int | float = 1000, max_part_size: int = 1024 * 1024
    ) -> FormData:
        content_type, _ = parse_options_header(self.headers.get("content-type"))
        if self._form is None and content_type == b"multipart/form-data":
            try:
                async with aclosing(self.stream()) as stream:
                    parser = InMemoryMultiPartParser(
                        self.headers, stream, max_file_bytes=self.max_file_bytes,
                        max_files=max_files, max_fields=max_fields, max_part_size=max_part_size,
                    )
                    self._form = await parser.parse()
            except UploadTooLarge as exc:
                raise HTTPException(413, exc.message) from None
            except MultiPartException as exc:
                raise HTTPException(400, exc.message) from None
        return await super()._get_form(max_files=max_files, max_fields=max_fields, max_part_size=max_part_size)


class InMemoryUploadRoute(APIRoute):
    """A route whose form is read by InMemoryFormRequest: uploads never touch the disk (FastAPI's custom
    request class pattern), with the image limit of the app's settings."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def in_memory_handler(request: Request) -> Response:
            settings: Settings = request.app.state.settings
            return await handler(InMemoryFormRequest(request.scope, request.receive, settings.max_image_bytes))

        return in_memory_handler


@dataclass(frozen=True)
class Post:
    """One checked post of a request: its record (image bytes and text, in memory) and its image's file name."""

    record: Record
    filename: str
    sides: list[str]  # the sides the model reads from this post ("text", "image")
    views: bool  # answer with the text-only and image-only views too


class Predictor:
    """One loaded run; concurrent requests' posts run through it together, one batch at a time (MicroBatcher)."""

    def __init__(self, run_dir: Path, settings: Settings, backend: str | None = None):
        from mmsent.api import load_run

        self.run = load_run(run_dir, backend=backend)
        folder = RunFolder.open(run_dir)
        # read once: the model in memory is this run's, even if a newer run is published at run_dir later
        self.validation = ValidationMetrics.model_validate(folder.metrics())
        self.preset = folder.preset
        # a DataLoader worker process per model call would cost more than the call itself
        self.run.cfg = self.run.cfg.with_values({"runtime.num_workers": 0})
        self.settings = settings
        self.max_pixels = settings.max_image_pixels or self.run.cfg.data.max_image_pixels
        self.name = Path(run_dir).resolve().name
        self._decode_slots = threading.BoundedSemaphore(settings.decode_slots)
        self.encoder_draft = encoder_draft_size(self.run.encoders.values())
        self.sides = [m for m in SIDES if m in set(self.run.classifier.encoder_modalities.values())]
        self.modality_dropout = self.run.cfg.model.modality_dropout
        # one post through the model now, so that the first request does not wait for the encoders' exports and
        # checks, their lexicons and tokenizers loading, or the first allocations of the inference sessions
        self.run.predict_proba([warm_up_record()], quiet=True, use_cache=False)
        # one worker thread runs the model, so model calls never overlap and image decoding stays one at a time
        self.batcher: MicroBatcher[Post] = MicroBatcher(self.run_jobs, settings.batch_size, settings.batch_wait_ms / 1000)

    def check_image(self, data: bytes, filename: str) -> None:
        """Raise a 4xx for an empty, oversized or unreadable image, or one too costly to decode."""
        if not data:
            raise HTTPException(400, f"image {filename!r}: the upload is empty")
        if len(data) > self.settings.max_image_bytes:
            raise HTTPException(
                413, f"image {filename!r}: {len(data):,} bytes, over the limit of {self.settings.max_image_bytes:,}"
            )
        try:
            if self.encoder_draft is not None:
                # the encoders decode the image (once, under the model lock); here only its header is read:
                # format, pixels, and the memory the encoders' decode will take (at their JPEG draft size)
                check_image_header(data, self.max_pixels, self.encoder_draft, self.settings.max_decode_bytes)
            else:
                # no encoder will decode it: decode it here (JPEG at draft size), a few at a time
                with self._decode_slots:
                    open_image(data, self.max_pixels, CHECK_DRAFT_PX, self.settings.max_decode_bytes)
        except ImageReadError as exc:
            raise HTTPException(400, f"image {filename!r}: {readable_reason(str(exc))}") from None

    def check_text(self, text: str) -> str:
        text = text.strip()
        if not text:
            raise HTTPException(400, "text: is empty; send the post's text, or leave the field out for an image-only post")
        if len(text) > self.settings.max_text_chars:
            raise HTTPException(400, f"text: {len(text):,} characters, over the limit of {self.settings.max_text_chars:,}")
        return text

    def check_post(self, data: bytes | None, name: str, text: str | None) -> tuple[str, list[str]]:
        """The cleaned-up text of an acceptable post and the sides of it the model reads; else a 4xx."""
        if data is None and text is None:
            raise HTTPException(422, "send an image, a text, or both ('image' file, 'text' field)")
        if data is not None:
            self.check_image(data, name)  # checked even when the model does not read images: a bad upload is a 400
        text = self.check_text(text) if text is not None else ""
        given = [side for side, present in (("text", bool(text)), ("image", data is not None)) if present]
        read = [side for side in self.sides if side in given]
        if not read:
            raise HTTPException(422, f"this model reads {' and '.join(self.sides)} only; send the post's {self.sides[0]}")
        return text, read

    def checked_posts(self, posts: list[tuple[bytes | None, str, str | None]], views: bool) -> list[Post]:
        """Check every (image bytes or None, file name, text or None) post: a 4xx naming the first bad one, else the posts.

        A side the post lacks gets a stand-in input whose features are then blanked to their training mean
        (as `mmsent ablate` does).
        """
        checked = []
        for i, (data, filename, text) in enumerate(posts):
            try:
                text, sides = self.check_post(data, filename, text)
            except HTTPException as exc:
                raise HTTPException(exc.status_code, post_error(i, len(posts), exc.detail)) from None
            record = Record(f"upload-{uuid.uuid4().hex}", None, text, UPLOAD_PATH,
                            image_bytes=data if data is not None else stand_in_image())
            checked.append(Post(record, filename, sides, views))
        return checked

    async def predict(self, posts: list[tuple[bytes | None, str, str | None]], views: bool = True) -> list[Prediction]:
        """Check the posts off the event loop, then run them through the model with other requests' posts."""
        checked = await run_in_threadpool(self.checked_posts, posts, views)
        return await self.batcher.submit(checked)

    def run_jobs(self, jobs: list[list[Post]]) -> list[list[Prediction] | HTTPException]:
        """Each job's predictions from one model call over all their posts; a job whose image cannot be decoded
        gets its own 400 and the others run again without it.

        With views, the same features give the text-only and image-only answers too: the encoders run
        once, and the head once over the posts and their blanked copies.
        """
        outcomes: dict[int, list[Prediction] | HTTPException] = {}
        pending = list(range(len(jobs)))
        while pending:
            posts = [post for i in pending for post in jobs[i]]
            try:
                # uploads are one-off inputs: their features stay off the on-disk cache
                feats = self.run.features([post.record for post in posts], quiet=True, use_cache=False)
                answers = self.side_probabilities(feats, [post.sides for post in posts], any(p.views for p in posts))
            except DataError as exc:  # an image that passed its header check but cannot be decoded
                failed = {i: self.describe_problems(exc, jobs[i]) for i in pending}
                failed = {i: detail for i, detail in failed.items() if detail} or {i: str(exc) for i in pending}
                outcomes.update({i: HTTPException(400, detail) for i, detail in failed.items()})
                pending = [i for i in pending if i not in failed]
                continue
            except MmsentError as exc:
                outcomes.update({i: HTTPException(400, str(exc)) for i in pending})
                break
            row = iter(range(len(posts)))
            outcomes.update({i: [self.prediction(next(row), post.sides, answers, post.views) for post in jobs[i]]
                             for i in pending})
            break
        return [outcomes[i] for i in range(len(jobs))]

    def side_probabilities(self, feats: dict, read: list[list[str]], views: bool) -> dict[tuple[str, ...], np.ndarray]:
        """Probabilities (N, C) per combination of sides read: every side, and each side alone where needed."""
        wanted = {side for sides in read if len(sides) < len(self.sides) for side in sides}
        if views and len(self.sides) > 1:
            wanted |= set(self.sides)
        combinations = [tuple(self.sides), *((side,) for side in self.sides if side in wanted)]
        drops = [frozenset(self.sides) - set(c) for c in combinations]
        return dict(zip(combinations, self.run.predict_blanked(feats, drops), strict=True))

    def prediction(self, i: int, sides: list[str], answers: dict[tuple[str, ...], np.ndarray], views: bool) -> Prediction:
        """The answer for post i from the sides it has, its one-side views, and the sentence that explains it."""
        tag, probabilities = class_answer(answers[tuple(sides)][i])
        side_views = {}
        if views and len(sides) > 1:
            side_views = {side: View(**dict(zip(("tag", "probabilities"), class_answer(answers[(side,)][i]),
                                                strict=True))) for side in sides}
        return Prediction(tag=tag, probabilities=probabilities, model=self.name, inputs=sides, views=side_views,
                          explanation=self.explain(tag, sides, side_views))

    def explain(self, tag: str, sides: list[str], views: dict[str, View]) -> str:
        """'The text is positive, the image is neutral; the answer follows the text.' or how a missing side was handled."""
        if views:
            said = {side: views[side].tag for side in sides}
            text = "The " + ", the ".join(f"{side} is {said[side]}" for side in sides)
            agreeing = [side for side in sides if said[side] == tag]
            if len(agreeing) == len(sides):
                return f"{text}: both point the same way."
            if agreeing:
                return f"{text}; the answer ({tag}) follows the {agreeing[0]}."
            return f"{text}; together they read as {tag}."
        missing = [side for side in self.sides if side not in sides]
        if not missing:
            return f"The model reads the {sides[0]} only." if len(self.sides) == 1 else ""
        how = (f"the model was trained with modality dropout ({self.modality_dropout:g}), so it has seen posts with "
               "one side blanked" if self.modality_dropout > 0 else
               "the model was not trained with a side missing, so trust this answer less (`mmsent ablate` measures "
               "how well it does so)")
        return (f"{sides[0].capitalize()} only: no {missing[0]} was sent, so the {missing[0]} side was blanked to its "
                f"training mean; {how}.")

    @staticmethod
    def describe_problems(exc: DataError, posts: list[Post]) -> str:
        """The encoders' problems with these posts' images in the words of check_image: by post and file
        name, not by guid; empty when none of the problems is theirs."""
        index = {post.record.guid: i for i, post in enumerate(posts)}
        lines = [
            post_error(index[p.guid], len(posts), f"image {posts[index[p.guid]].filename!r}: {readable_reason(p.reason)}")
            for p in exc.problems
            if p.guid in index
        ]
        return "; ".join(lines)

    def close(self) -> None:
        """Stop the model's worker thread."""
        self.batcher.close()

    def info(self) -> ModelInfo:
        cfg = self.run.cfg
        return ModelInfo(
            name=self.name,
            preset=self.preset,
            encoders=list(cfg.model.encoders),
            head=cfg.model.head,
            labels=list(LABELS),
            mmsent_version=__version__,
            validation=self.validation,
            limits=Limits(
                max_image_bytes=self.settings.max_image_bytes,
                max_image_pixels=self.max_pixels,
                max_decode_bytes=self.settings.max_decode_bytes,
                max_text_chars=self.settings.max_text_chars,
                max_batch=self.settings.max_batch,
            ),
        )


def warm_up_record() -> Record:
    """A made-up post (a grey JPEG and a short tweet) that exercises every encoder once."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (128, 128, 128)).save(buffer, format="JPEG")
    return Record("warm-up", None, "a warm-up post :) #happyday", UPLOAD_PATH, image_bytes=buffer.getvalue())


def encoder_draft_size(encoders) -> int | None:
    """The largest JPEG draft size the run's image encoders decode at (their resize); None if none decodes images."""
    from mmsent.encoders.base import ImageEncoder

    sizes = [encoder.preprocessing.resize for encoder in encoders if isinstance(encoder, ImageEncoder)]
    return max(sizes) if sizes else None


def class_answer(probs: np.ndarray) -> tuple[str, dict[str, float]]:
    """The tag and the rounded probabilities of one row of class probabilities."""
    return LABELS[int(probs.argmax())], {lab: round(float(x), 6) for lab, x in zip(LABELS, probs, strict=True)}


@functools.cache
def stand_in_image() -> bytes:
    """A small grey JPEG for a post without an image: its features are blanked, so only its validity matters."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buf, format="JPEG")
    return buf.getvalue()


def readable_reason(reason: str) -> str:
    """PIL's 'cannot identify image file <_io.BytesIO ...>' names an in-memory buffer, not the upload."""
    if "cannot identify image file" in reason:
        return "not an image format that can be read (JPEG, PNG, GIF, WebP, BMP, ...)"
    return reason


def post_error(i: int, n_posts: int, detail: str) -> str:
    """A post's error, with its index when the request held several."""
    return f"post {i}: {detail}" if n_posts > 1 else detail


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Missing fields as one readable sentence, the same shape as every other error."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "request"
        parts.append(f"{field}: {err.get('msg', 'invalid')}".replace("Field required", "is missing or empty"))
    return JSONResponse({"detail": "; ".join(parts)}, status_code=422)


def require_multipart(request: Request) -> None:
    """Prediction requests are multipart/form-data; anything else is a 415, not a confusing 422."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(415, f"send multipart/form-data with an 'image' file and/or a 'text' field, not {content_type or 'no content type'!r}")


async def read_image(upload: UploadFile, limit: int) -> tuple[bytes, str]:
    """The bytes of an image part (at most limit + 1 are read) and its file name."""
    name = upload.filename or "image"
    part_type = (upload.content_type or "application/octet-stream").lower()
    if not part_type.startswith(IMAGE_PART_TYPES):
        raise HTTPException(415, f"image {name!r}: content type {part_type!r} is not an image type")
    return await upload.read(limit + 1), name


def mb_to_bytes(name: str, mb: float) -> int:
    """A limit given in MB (MiB) as bytes; a limit that is not a positive number is refused."""
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not math.isfinite(mb) or mb * MIB < 1:
        raise MmsentError(f"service limit {name} is {mb!r}; it must be a positive number of MB (one byte at least)")
    return int(mb * MIB)


def create_app(
    run_dir: Path,
    max_image_mb: float = 10,
    max_text_chars: int = 2000,
    max_batch: int = 32,
    max_image_pixels: int | None = None,
    max_decode_mb: float = DEFAULT_MAX_DECODE_BYTES / MIB,
    batch_size: int = 16,
    batch_wait_ms: float = 5.0,
    backend: str | None = None,
) -> FastAPI:
    """The service for one trained run folder; the model is loaded here, once (backend: see mmsent.api.load_run)."""
    settings = Settings(
        mb_to_bytes("max_image_mb", max_image_mb), max_text_chars, max_batch, max_image_pixels,
        mb_to_bytes("max_decode_mb", max_decode_mb), batch_size=batch_size, batch_wait_ms=batch_wait_ms,
    )
    predictor = Predictor(Path(run_dir), settings, backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        predictor.close()

    app = FastAPI(
        lifespan=lifespan,
        title="mmsent",
        version=__version__,
        description="Sentiment (negative / neutral / positive) of a post from its image and its text. "
        f"Model: {predictor.name} ({' + '.join(predictor.run.cfg.model.encoders)}, head {predictor.run.cfg.model.head}).",
    )
    app.state.predictor = predictor
    app.state.settings = settings
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(BodySizeLimit, settings=settings)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # both prediction routes: multipart only, and their 4xx answers documented in the OpenAPI description;
    # their forms are parsed in memory (InMemoryUploadRoute)
    POST_OPTIONS = {"responses": ERRORS, "dependencies": [Depends(require_multipart)]}  # noqa: N806
    uploads = APIRouter(route_class=InMemoryUploadRoute)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        # browsers ask for /favicon.ico whatever the page links; answer with the page's own icon
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    @app.get("/health", response_model=Health, summary="liveness: the model is loaded")
    def health() -> Health:
        return Health(model=predictor.name)

    @app.get("/model", response_model=ModelInfo, summary="the served model: encoders, head, validation metrics, limits")
    def model_info() -> ModelInfo:
        return predictor.info()

    @uploads.post(
        "/predict",
        response_model=Prediction,
        **POST_OPTIONS,
        summary="predict the sentiment of one post (image and text, or either alone)",
    )
    async def predict(
        image: Annotated[UploadFile | None, File(description="the post's image (JPEG, PNG, ...); leave it out for "
                                                 "a text-only post")] = None,
        text: Annotated[str | None, Form(description="the post's text; leave it out for an image-only post")] = None,
        views: Annotated[bool, Query(description="also answer from the text alone and the image alone")] = True,
    ) -> Prediction:
        data, name = await read_image(image, settings.max_image_bytes) if image is not None else (None, "image")
        return (await predictor.predict([(data, name, text)], views))[0]

    @uploads.post(
        "/predict/batch",
        response_model=BatchPrediction,
        **POST_OPTIONS,
        summary="predict several posts in one model batch: the i-th image goes with the i-th text",
    )
    async def predict_batch(
        images: Annotated[list[UploadFile], File(description="the posts' images, in order")],
        texts: Annotated[list[str], Form(description="the posts' texts, in the same order")],
        views: Annotated[bool, Query(description="also answer from the text alone and the image alone")] = True,
    ) -> BatchPrediction:
        if len(images) != len(texts):
            raise HTTPException(400, f"got {len(images)} images and {len(texts)} texts; send one text per image")
        if len(images) > settings.max_batch:
            raise HTTPException(413, f"{len(images)} posts in one batch, over the limit of {settings.max_batch}")
        posts = [(*await read_image(upload, settings.max_image_bytes), text) for upload, text in zip(images, texts, strict=True)]
        return BatchPrediction(predictions=await predictor.predict(posts, views), model=predictor.name)

    app.include_router(uploads)
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port, so that a port in use is a clear error before anything is served."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise MmsentError(f"cannot listen on host {host!r}: {exc.strerror}; pass --host with an address of this machine") from None
    sock = socket.socket(family, kind, proto)
    # as uvicorn does: a restarted service may rebind a port whose old connections linger in TIME_WAIT
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise MmsentError(bind_error(host, port, exc)) from None
    return sock


def bind_error(host: str, port: int, exc: OSError) -> str:
    """What went wrong binding host:port, and what to pass instead."""
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use (another service, or mmsent serve already running); pass --port with a free port"
    if exc.errno == errno.EACCES:
        return f"port {port} on {host} needs privileges this user lacks (ports below 1024 do); pass --port 1024 or above"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"host {host} is not an address of this machine; pass --host 127.0.0.1 or one of its addresses"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def serve(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_image_mb: float = 10,
    max_decode_mb: float = DEFAULT_MAX_DECODE_BYTES / MIB,
    quiet: bool = False,
    batch_size: int = 16,
    batch_wait_ms: float = 5.0,
    backend: str | None = None,
) -> None:
    """Bind host:port, load the run and serve it with uvicorn until interrupted."""
    import uvicorn

    sock = bind_socket(host, port)  # first: a port in use is refused before the model is loaded
    try:
        app = create_app(run_dir, max_image_mb=max_image_mb, max_decode_mb=max_decode_mb, batch_size=batch_size,
                         batch_wait_ms=batch_wait_ms, backend=backend)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {host}, beyond this machine; the service has no authentication")
        port = sock.getsockname()[1]  # the port the OS chose for --port 0
        url_host = f"[{host}]" if ":" in host else host
        print(f"serving {app.state.predictor.name} on http://{url_host}:{port}/ (OpenAPI description at /openapi.json)",
              flush=True)
        config = uvicorn.Config(app, log_level="warning" if quiet else "info")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
