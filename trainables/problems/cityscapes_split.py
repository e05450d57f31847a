"""The `002` authors' Cityscapes split: which official frames train, validate and test.

`002` §3.3 trains on 2,380 of the 2,975 official training frames, validates on the other 595
and tests on the 500 official validation frames. The frames of each part are the authors' own
(Gabriel-SGama/UnitScal_vs_SMTOs, ``datasets/city_preprocess_256_128/{train,val,test}.txt``),
shipped here as ``cityscapes_splits/<part>.txt``, one ``<official split>/<city>/<frame>`` per
line (``train/aachen/aachen_000001_000019``).

``split`` (a Cityscapes option): ``002`` uses these lists (every listed frame must be in the
layout), ``random`` the fixed-seed split of ``val_fraction`` (``split_seed``), and ``auto`` (the
default) the lists when the official layout holds every listed frame, else the random split.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

from trainables.errors import ConfigError, DataError

LISTS = Path(__file__).with_name("cityscapes_splits")
PARTS = ("train", "val", "test")
SPLITS = ("auto", "002", "random")


def listed_frames(part: str, directory: str | None = None) -> tuple[str, ...]:
    """The frames of ``part`` (train / val / test) in the authors' order, as ``<split>/<city>/<frame>``."""
    return _read_list(str(Path(directory or LISTS) / f"{part}.txt"))


@functools.lru_cache(maxsize=None)
def _read_list(path: str) -> tuple[str, ...]:
    lines = (line.strip() for line in Path(path).read_text().splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def frame_id(image_path: str) -> str:
    """``.../leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png`` -> ``train/aachen/aachen_000001_000019``."""
    city_dir, name = os.path.split(image_path)
    split_dir, city = os.path.split(city_dir)
    return f"{os.path.basename(split_dir)}/{city}/{name.split('_leftImg8bit')[0]}"


def authors_indices(train_images: Sequence[str], val_images: Sequence[str],
                    directory: str | None = None) -> dict[str, list[int]] | None:
    """Indices of the listed frames of each part, into the official train and val images sorted by
    path (as ``OfficialCityscapes`` orders them: train and val parts index the train images, the
    test part the val images); None when a listed frame is not in the layout."""
    order = {"train": [frame_id(p) for p in sorted(train_images)], "val": [frame_id(p) for p in sorted(val_images)]}
    position = {split: {frame: i for i, frame in enumerate(frames)} for split, frames in order.items()}
    out: dict[str, list[int]] = {}
    for part in PARTS:
        indices = []
        for frame in listed_frames(part, directory):
            split = frame.split("/", 1)[0]
            index = position.get(split, {}).get(frame)
            if index is None:
                return None
            indices.append(index)
        out[part] = indices
    return out


def choose(split: str, layout: str, train_images: Sequence[str], val_images: Sequence[str], root: str,
           directory: str | None = None) -> dict[str, list[int]] | None:
    """The authors' indices for ``split`` = 002 or auto (None: use the random split); a ConfigError
    or DataError where ``002`` cannot be had."""
    if split not in SPLITS:
        raise ConfigError(f"cityscapes split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "random":
        return None
    if layout != "official":
        if split == "002":
            raise ConfigError(f"split=002 names frames of the official layout; the {layout} layout under {root} has "
                              "no frame names (use split=random, or the official layout)")
        return None
    indices = authors_indices(train_images, val_images, directory)
    if indices is None and split == "002":
        listed = sum(len(listed_frames(p, directory)) for p in PARTS)
        raise DataError(f"split=002 lists {listed} official frames, and the layout under {root} lacks some of them "
                        "(it needs all of leftImg8bit/train and leftImg8bit/val; or use split=random)")
    return indices
