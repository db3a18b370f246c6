"""What the prediction log keeps of an input: a few numbers that say whether a 28x28 digit
still looks like MNIST (the model's penultimate-layer embedding beside them comes from
`Predictor.answer`, inference/).

The same description of the training images is the drift reference (monitoring/drift.py),
so both sides are computed here, by one function, on the pixels the model saw (after
`digits.prepare` or the scoring JSON). The numbers are cheap (a few microseconds per image
with numpy) and chosen to move when inputs change in the ways that hurt a digit model:

- `ink`: mean intensity (0-1); thicker pens, inverted pictures, noise raise it;
- `cx`, `cy`: centre of mass (pixels); MNIST digits are centred at about (14, 14);
- `spread`: radius of gyration (pixels): how far the ink lies from that centre;
- `width`, `height`: the bounding box of the ink (pixels above half intensity);
- `stroke`: mean stroke width, twice the ink area over its perimeter (pixels);
- `slant`: the ink's shear from vertical (degrees, atan of the second moments' ratio);
- `border`: mean intensity of the 3-pixel frame (0-1): MNIST's frame is blank; an inverted
  or badly cropped picture fills it.
"""

from __future__ import annotations

import functools

import numpy as np

FEATURES = ("ink", "cx", "cy", "spread", "width", "height", "stroke", "slant", "border")
FRAME = 3          # pixels of the border frame
INK_LEVEL = 128    # a pixel is ink at half intensity or more (MNIST ink is 0-255 on black)


@functools.cache
def _moments() -> np.ndarray:
    """Pixel weights whose products with an image's pixels give its mass, first and second
    moments and the frame's mean: one matrix product describes a whole batch."""
    rows, cols = np.mgrid[0:28, 0:28].reshape(2, -1).astype(np.float64)
    frame = np.ones((28, 28), bool)
    frame[FRAME:-FRAME, FRAME:-FRAME] = False
    frame_mean = frame.ravel() / frame.sum()
    return np.stack([np.ones(784), rows, cols, rows * rows, cols * cols, rows * cols,
                     frame_mean], axis=1)


def describe(images: np.ndarray) -> np.ndarray:
    """The FEATURES of each of `images` ((n, 28, 28[, 1]) uint8, white ink on black),
    as an (n, len(FEATURES)) float array; a blank image gets zeros."""
    n = len(images)
    pixels = np.asarray(images, dtype=np.uint8).reshape(n, 784)
    mass, sr, sc, srr, scc, src, border = (pixels @ _moments()).T
    safe = np.where(mass > 0, mass, 1.0)
    cy, cx = sr / safe, sc / safe
    myy = np.maximum(srr / safe - cy * cy, 0)
    mxx = np.maximum(scc / safe - cx * cx, 0)
    mxy = src / safe - cx * cy
    spread = np.sqrt(myy + mxx)
    # shear from vertical, as deskewing measures it: 0 upright, about -6 for MNIST's mean
    slant = np.degrees(np.arctan(mxy / np.where(myy > 0, myy, 1.0)))
    ink_px = pixels.reshape(n, 28, 28) >= INK_LEVEL
    any_r, any_c = ink_px.any(axis=2), ink_px.any(axis=1)
    height = np.where(any_r.any(axis=1), 28 - any_r[:, ::-1].argmax(1) - any_r.argmax(1), 0)
    width = np.where(any_c.any(axis=1), 28 - any_c[:, ::-1].argmax(1) - any_c.argmax(1), 0)
    stroke = 2 * ink_px.sum(axis=(1, 2)) / np.maximum(_perimeter(ink_px), 1)
    out = np.stack([mass / (255 * 784), cx, cy, spread, width, height, stroke, slant,
                    border / 255], axis=1)
    out[mass == 0] = 0.0
    return out


def _perimeter(ink: np.ndarray) -> np.ndarray:
    """Ink pixels with a 4-neighbour that is not ink (the image edge counts as blank)."""
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    inner = (padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2]
             & padded[:, 1:-1, 2:])
    return (ink & ~inner).sum(axis=(1, 2))
