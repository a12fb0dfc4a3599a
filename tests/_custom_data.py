"""Tiny datasets in the three layouts of docs/custom-dataset.md, for the tests.

Every image is a few flat regions whose colour depends on the class (with
noise), so a tiny model learns something within a few iterations.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

# class -> image colour (what the photo shows) for all three datasets
PHOTO_COLORS = np.array([[40, 40, 40], [200, 60, 60], [60, 200, 60]], np.uint8)
NAMES = {"voc": ["background", "cat", "dog"], "city": ["road", "car", "sky"],
         "rgb": ["water", "boat", "pier"]}
# mask colours: VOC's palette entries 0..2; the colour-coded masks' own table
VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 252) + [224, 224, 192]
RGB_MASK_COLORS = np.array([[0, 0, 255], [255, 255, 0], [128, 64, 0]], np.uint8)
UNLABELED_RGB = (0, 0, 0)


def scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, 0-based class map) with a background and a rectangle or two."""
    labels = np.zeros((h, w), np.int64)
    for _ in range(int(rng.integers(1, 3))):
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        labels[y0:y0 + int(rng.integers(h // 4, h // 2)),
               x0:x0 + int(rng.integers(w // 4, w // 2))] = int(rng.integers(1, 3))
    image = PHOTO_COLORS[labels].astype(np.int16) + rng.integers(-20, 21, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), labels


def _border(labels: np.ndarray) -> np.ndarray:
    """Pixels at a class boundary (VOC draws a 255 border there)."""
    edge = np.zeros(labels.shape, bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    return edge


def write_table(path: str, names, colors, first_idx: int, unlabeled=None) -> str:
    with open(path, "w") as fh:
        fh.write("Idx,Name,R,G,B\n")
        if unlabeled is not None:
            fh.write("0,unlabeled,{},{},{}\n".format(*unlabeled))
        for k, (name, c) in enumerate(zip(names, colors)):
            fh.write(f"{k + first_idx},{name},{c[0]},{c[1]},{c[2]}\n")
    return path


def make_voc(root: str, n: int = 8, seed: int = 0) -> dict:
    """VOC-like: JPEGImages/*.jpg, SegmentationClass/*.png (P mode, indices 0..2,
    255 on object borders), one extra image without mask; 0-based table."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "JPEGImages"))
    os.makedirs(os.path.join(root, "SegmentationClass"))
    for i in range(n + 1):
        h, w = int(rng.integers(36, 48)), int(rng.integers(40, 56))
        image, labels = scene(rng, h, w)
        Image.fromarray(image).save(os.path.join(root, "JPEGImages", f"2007_{i:06d}.jpg"))
        if i == n:
            break  # no mask: VOC has many unlabelled images
        idx = labels.astype(np.uint8)
        idx[_border(labels)] = 255
        mask = Image.fromarray(idx, "P")
        mask.putpalette(VOC_PALETTE)
        mask.save(os.path.join(root, "SegmentationClass", f"2007_{i:06d}.png"))
    table = write_table(os.path.join(root, "classes.csv"), NAMES["voc"],
                        [VOC_PALETTE[3 * k:3 * k + 3] for k in range(3)], first_idx=0)
    return {"images": "JPEGImages", "masks": "SegmentationClass", "table": table,
            "opts": ["DATASET.label_format", "zero_based", "DATASET.ignore_label", "255"]}


def make_cityscapes(root: str, n_per_city: int = 3, seed: int = 1) -> dict:
    """Cityscapes-like: leftImg8bit/{train,val}/<city>/<id>_leftImg8bit.png and
    gtFine/.../<id>_gtFine_labelTrainIds.png (L mode, 0..2 and 255), plus the
    _gtFine_color.png files the pairing must skip; 0-based table."""
    rng = np.random.default_rng(seed)
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for city in cities:
            img_dir = os.path.join(root, "leftImg8bit", split, city)
            gt_dir = os.path.join(root, "gtFine", split, city)
            os.makedirs(img_dir)
            os.makedirs(gt_dir)
            for i in range(n_per_city):
                stem = f"{city}_000000_{i:06d}"
                image, labels = scene(rng, 32, 64)
                ids = labels.astype(np.uint8)
                ids[:2, :] = 255  # ego-vehicle style ignore band
                Image.fromarray(image).save(os.path.join(img_dir, f"{stem}_leftImg8bit.png"))
                Image.fromarray(ids, "L").save(os.path.join(gt_dir, f"{stem}_gtFine_labelTrainIds.png"))
                Image.fromarray(RGB_MASK_COLORS[labels]).save(
                    os.path.join(gt_dir, f"{stem}_gtFine_color.png"))
    table = write_table(os.path.join(root, "classes.csv"), NAMES["city"],
                        [[128, 64, 128], [0, 0, 142], [70, 130, 180]], first_idx=0)
    return {"images": "leftImg8bit/train", "masks": "gtFine/train",
            "val_images": "leftImg8bit/val", "val_masks": "gtFine/val",
            "image_suffix": "_leftImg8bit", "mask_suffix": "_gtFine_labelTrainIds", "table": table,
            "opts": ["DATASET.label_format", "zero_based", "DATASET.ignore_label", "255"]}


def make_rgb(root: str, n: int = 8, seed: int = 2) -> dict:
    """Colour-coded masks: images/*.png, masks/*.png (RGB, class colours from the
    1-based table, black = unlabeled via its Idx-0 row)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "masks"))
    for i in range(n):
        image, labels = scene(rng, 40, 40 + 4 * i)
        mask = RGB_MASK_COLORS[labels]
        mask[_border(labels)] = UNLABELED_RGB
        Image.fromarray(image).save(os.path.join(root, "images", f"img{i}.png"))
        Image.fromarray(mask).save(os.path.join(root, "masks", f"img{i}.png"))
    table = write_table(os.path.join(root, "classes.csv"), NAMES["rgb"], RGB_MASK_COLORS,
                        first_idx=1, unlabeled=UNLABELED_RGB)
    return {"images": "images", "masks": "masks", "table": table,
            "opts": ["DATASET.label_format", "rgb"]}


MAKERS = {"voc": make_voc, "city": make_cityscapes, "rgb": make_rgb}


def tiny_model_opts(root: str, out_dir: str, table: str, *extra) -> list[str]:
    """Config overrides: a MobileNetV2 + C1 model on 32-pixel images, CPU friendly."""
    return ["DATASET.root_dataset", root,
            "DATASET.list_train", os.path.join(root, "training.odgt"),
            "DATASET.list_val", os.path.join(root, "validation.odgt"),
            "DATASET.num_class", "3", "DATASET.class_table", table,
            "DATASET.imgSizes", "(32,)", "DATASET.imgMaxSize", "64",
            "MODEL.arch_encoder", "mobilenetv2dilated", "MODEL.arch_decoder", "c1",
            "MODEL.fc_dim", "320", "MODEL.pretrained", "False", "MODEL.bn_momentum", "0.1",
            "TRAIN.batch_size_per_gpu", "2", "TRAIN.num_epoch", "2", "TRAIN.epoch_iters", "3",
            "TRAIN.workers", "0", "TRAIN.disp_iter", "1", "TRAIN.ignore_padding", "True",
            "VAL.workers", "0", "TEST.workers", "0",
            "VAL.checkpoint", "epoch_2.pth", "TEST.checkpoint", "epoch_2.pth",
            "DIR", out_dir, *map(str, extra)]
