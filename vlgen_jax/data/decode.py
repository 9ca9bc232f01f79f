"""Robust decoding of one record's image and caption.

Every failure is a `BadRecord` carrying a reason from `SKIP_REASONS`; the
pipeline turns it into a skipped, counted record instead of an exception.
Images in other modes than RGB (grayscale, with alpha, palette, 16-bit, CMYK)
are converted and the conversion is reported, not treated as an error.

Pixel conventions: decoded images are uint8 (H, W, 3) RGB; model inputs are
float32 in [-1, 1] (`x / 127.5 - 1`).
"""
from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# Reasons a record is skipped, and events on records that are kept. These are
# the keys of the pipeline's data statistics (see pipeline.py).
UNDECODABLE_IMAGE = "undecodable_image"   # garbage/truncated bytes, unknown format
MISSING_FILE = "missing_file"             # image or caption file absent
BAD_CAPTION = "bad_caption"               # not UTF-8 or not text
EMPTY_CAPTION = "empty_caption"           # empty or whitespace only
BAD_RECORD = "bad_record"                 # undecodable record container (e.g. msgpack)
SKIP_REASONS = (UNDECODABLE_IMAGE, MISSING_FILE, BAD_CAPTION, EMPTY_CAPTION, BAD_RECORD)

CONVERTED_MODE = "converted_mode"         # kept: converted to RGB from another mode
TRUNCATED_CAPTION = "truncated_caption"   # kept: caption cut to max_text_len
KEPT_EVENTS = (CONVERTED_MODE, TRUNCATED_CAPTION)

# Alpha is composited over this background (transparent logos become legible
# instead of showing whatever color the transparent pixels happen to hold).
ALPHA_BACKGROUND = (255, 255, 255)


class BadRecord(Exception):
  """A record that cannot be used; `reason` is one of `SKIP_REASONS`."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


def decode_caption(value: Any) -> str:
  """bytes / str / numpy scalar -> stripped str; raises BadRecord."""
  if isinstance(value, np.ndarray):
    if value.ndim != 0:
      raise BadRecord(BAD_CAPTION, f"expected one caption, got an array of shape {value.shape}")
    value = value.item()
  if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
    try:
      value = bytes(value).decode("utf-8")
    except UnicodeDecodeError:
      raise BadRecord(BAD_CAPTION, "caption is not valid UTF-8") from None
  if not isinstance(value, str):
    raise BadRecord(BAD_CAPTION, f"caption has type {type(value).__name__}")
  # Control characters other than whitespace would reach the tokenizer as
  # unknown pieces; newlines/tabs inside a caption become spaces.
  text = " ".join(value.split())
  if not text:
    raise BadRecord(EMPTY_CAPTION)
  return text


def caption_choices(value: Any) -> list[Any]:
  """A caption feature that may hold several captions (coco_captions) -> list."""
  if isinstance(value, np.ndarray) and value.ndim >= 1:
    return list(value.reshape(-1))
  if isinstance(value, (list, tuple)):
    return list(value)
  return [value]


def decode_image(data: Any) -> tuple[np.ndarray, bool]:
  """Encoded image bytes (or a decoded array) -> (uint8 (H, W, 3), converted?)."""
  if isinstance(data, np.ndarray) and data.dtype != np.uint8 and data.ndim == 0:
    data = data.item()
  if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 3:
    return _array_to_rgb(data)
  if isinstance(data, (np.ndarray, np.bytes_)):
    data = bytes(data)
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise BadRecord(UNDECODABLE_IMAGE, f"image has type {type(data).__name__}")
  if not data:
    raise BadRecord(UNDECODABLE_IMAGE, "empty image file")
  try:
    with warnings.catch_warnings():
      # Oversized images still decode (PIL raises past 2x the limit); EXIF
      # oddities are common in web data and harmless.
      warnings.simplefilter("ignore")
      with Image.open(io.BytesIO(data)) as img:
        img.load()  # Decodes now: truncated files fail here, not later.
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
  except BadRecord:
    raise
  except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError,
          Image.DecompressionBombError) as e:
    raise BadRecord(UNDECODABLE_IMAGE, str(e)) from None


def _to_rgb(img: Image.Image) -> tuple[np.ndarray, bool]:
  mode = img.mode
  if mode == "RGB":
    return np.asarray(img, np.uint8), False
  if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
    # 16-bit/32-bit grayscale: PIL's convert() clips to 0..255 (mostly white);
    # scale the full range down instead.
    arr = np.asarray(img).astype(np.float64)
    if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
      arr = arr / 257.0
    elif mode == "F" and arr.max(initial=0) <= 1.0:
      arr = arr * 255.0
    gray = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1), True
  if mode == "P" and "transparency" in img.info:
    img = img.convert("RGBA")
  if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
    return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), np.uint8), True
  return np.asarray(img.convert("RGB"), np.uint8), True


def _array_to_rgb(arr: np.ndarray) -> tuple[np.ndarray, bool]:
  """Already-decoded uint8 arrays (e.g. TFDS images decoded by tfds)."""
  channels = arr.shape[-1]
  if channels == 3:
    return arr, False
  if channels == 1:
    return np.repeat(arr, 3, axis=-1), True
  if channels == 4:
    return _to_rgb(Image.fromarray(arr, "RGBA"))[0], True
  raise BadRecord(UNDECODABLE_IMAGE, f"image array has {channels} channels")


def resize_center_crop(image: np.ndarray, resolution: int) -> np.ndarray:
  """Resizes the shorter side to `resolution` (antialiased bicubic), then
  center-crops to square. Images already at that size pass through unchanged."""
  h, w = image.shape[:2]
  if h == resolution and w == resolution:
    return image
  scale = resolution / min(h, w)
  new_h = max(resolution, round(h * scale))
  new_w = max(resolution, round(w * scale))
  img = Image.fromarray(image)
  if (new_h, new_w) != (h, w):
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
  top = (new_h - resolution) // 2
  left = (new_w - resolution) // 2
  return np.asarray(img.crop((left, top, left + resolution, top + resolution)), np.uint8)


def to_model_range(image: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def from_model_range(image: np.ndarray) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255] (clipped, rounded)."""
  return np.clip(np.round((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def load_image(data: Any, resolution: int) -> tuple[np.ndarray, bool]:
  """Bytes -> (float32 (resolution, resolution, 3) in [-1, 1], converted?)."""
  rgb, converted = decode_image(data)
  if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
    raise BadRecord(UNDECODABLE_IMAGE, f"image has shape {rgb.shape}")
  return to_model_range(resize_center_crop(rgb, resolution)), converted
