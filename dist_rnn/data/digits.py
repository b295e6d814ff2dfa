"""Image files made to look like MNIST digits, for a model trained on MNIST: grayscale, light on
dark, fitted into a 20x20 box and centred by its centre of mass in 28x28, as MNIST itself was made,
so that a photo or a drawing of a dark digit on white paper reads as one."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from dist_rnn.errors import UserError, first_line

SIDE, BOX = 28, 20  # MNIST: 28x28 images, digits fitted into 20x20


def foreground(image: Any) -> np.ndarray:
    """A PIL image as float grayscale, light marks on a background brought to 0 (MNIST's polarity)."""
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    if border(gray).mean() > 127:  # dark digit on a light background: MNIST digits are light on dark
        gray = 255 - gray
    return np.clip(gray - np.median(border(gray)), 0, 255)  # the background (paper, shadows) to 0


def ink_warning(fg: np.ndarray) -> Optional[str]:
    """Why an image's foreground does not look like one digit on a plain background (None when it
    does): a model answers something for any input, so say when the answer cannot mean much."""
    contrast = float(fg.max())
    if contrast < 32:
        return f"no digit-like ink: the image is nearly one shade (its marks differ from the background by " \
               f"{contrast:.0f} of 255)"
    ink = fg > 0.2 * contrast
    covered, at_edges = float(ink.mean()), float(border(ink).mean())
    if covered > 0.5 or at_edges > 0.2:  # a digit on paper leaves the edges clear
        return f"no digit on a plain background: ink covers {covered:.0%} of the image and {at_edges:.0%} of its edges"
    return None


def to_mnist(image: Any) -> np.ndarray:
    """A PIL image as a 28x28 uint8 MNIST-style digit: grayscale, light on dark, fitted and centred."""
    return fit_digit(foreground(image))


def fit_digit(gray: np.ndarray) -> np.ndarray:
    """A foreground (see foreground) fitted into MNIST's 20x20 box and centred in 28x28."""
    from PIL import Image

    ink = gray > 0.2 * gray.max() if gray.max() > 0 else np.zeros_like(gray, dtype=bool)
    if not ink.any():
        return np.zeros((SIDE, SIDE), dtype=np.uint8)  # a blank image: nothing to centre
    rows, cols = np.nonzero(ink)
    digit = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = BOX / max(digit.shape)
    size = (max(1, round(digit.shape[1] * scale)), max(1, round(digit.shape[0] * scale)))  # (width, height)
    digit = np.asarray(Image.fromarray(digit).resize(size, Image.LANCZOS), dtype=np.float32).clip(0, 255)
    # Centre of mass at the image centre, as MNIST did, kept inside the frame.
    total = digit.sum() or 1.0
    cy = (digit.sum(axis=1) * np.arange(digit.shape[0])).sum() / total
    cx = (digit.sum(axis=0) * np.arange(digit.shape[1])).sum() / total
    top = int(np.clip(round(SIDE / 2 - cy), 0, SIDE - digit.shape[0]))
    left = int(np.clip(round(SIDE / 2 - cx), 0, SIDE - digit.shape[1]))
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    out[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return (out * (255 / out.max())).round().astype(np.uint8)


def border(gray: np.ndarray) -> np.ndarray:
    """The pixels along the edges of an image: its background, for a digit in the middle."""
    return np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])


def read_image(path: str) -> tuple[np.ndarray, Optional[str]]:
    """One image file as an MNIST-style digit, and a warning when it holds no digit-like ink (one
    line naming the file when it cannot be read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            fg = foreground(image)
        return fit_digit(fg), ink_warning(fg)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: not an image this can read ({first_line(e)})") from None
