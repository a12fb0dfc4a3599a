"""A deployed .onnx is checked against what it claims: its metadata (architecture,
class count and names, preprocessing) must agree with the config it is run with
(``TEST.onnx_trust config``, the default), or the file decides (``file``)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mit_semseg.config import ConfigError, load_cfg
from mit_semseg.data.transforms import Preprocess
from mit_semseg.export import ScoreNetwork, export_onnx, exportable, metadata
from mit_semseg.inference import Segmenter
from mit_semseg.inference.backends import OnnxMismatchError
from mit_semseg.inference.engine import engine_from_config
from mit_semseg.models import ModelBuilder

from _support import CFG, NUM_CLASS, run_script

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# the tiny synthetic-demo model, as another encoder would describe it
PAIRS = {"resnet18dilated": 512, "mobilenetv2dilated": 320}


def opts_for(encoder: str, *extra: str) -> list[str]:
    return ["MODEL.arch_encoder", encoder, "MODEL.fc_dim", str(PAIRS[encoder]),
            "MODEL.arch_decoder", "c1", "MODEL.pretrained", "False", "DATASET.class_table", "",
            "DATASET.imgSizes", "(40, 56)", "DATASET.imgMaxSize", "120", "TEST.workers", "0",
            *extra]


def export_tiny(cfg, path: str, props: dict[str, str] | None = None) -> str:
    torch.manual_seed(0)
    enc = ModelBuilder.build_encoder(cfg.MODEL.arch_encoder, cfg.MODEL.fc_dim, "",
                                     pretrained=False)
    dec = ModelBuilder.build_decoder(cfg.MODEL.arch_decoder, cfg.MODEL.fc_dim,
                                     cfg.DATASET.num_class, "", use_softmax=True)
    export_onnx(exportable(ScoreNetwork(enc, dec)), path,
                props=metadata(cfg) if props is None else props)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One tiny export per encoder (8 classes each), with its metadata."""
    base = tmp_path_factory.mktemp("onnx_meta")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {enc: export_tiny(load_cfg(CFG, opts_for(enc)), str(base / f"{enc}.onnx"))
                for enc in PAIRS}
    finally:
        torch.set_num_threads(before)


def onnx_engine(path: str, cfg_encoder: str, *extra: str):
    cfg = load_cfg(CFG, opts_for(cfg_encoder, "TEST.backend", "onnxruntime", "TEST.onnx", path,
                                 *extra))
    return engine_from_config(cfg, "TEST", "cpu")


@pytest.mark.parametrize("file_encoder,cfg_encoder", [("resnet18dilated", "mobilenetv2dilated"),
                                                      ("mobilenetv2dilated", "resnet18dilated")])
def test_other_encoder_same_class_count_is_refused_naming_both(files, file_encoder, cfg_encoder):
    with pytest.raises(OnnxMismatchError) as info:
        onnx_engine(files[file_encoder], cfg_encoder)
    msg = str(info.value)
    assert "\n" not in msg and files[file_encoder] in msg
    assert (f"the file's arch_encoder '{file_encoder}' vs config MODEL.arch_encoder "
            f"'{cfg_encoder}'") in msg
    assert (f"the file's fc_dim {PAIRS[file_encoder]} vs config MODEL.fc_dim "
            f"{PAIRS[cfg_encoder]}") in msg
    assert "TEST.onnx_trust file" in msg  # what to do
    assert "num_class" not in msg  # the class count agrees (8)


def test_matching_metadata_passes(files):
    for enc, path in files.items():
        engine = onnx_engine(path, enc)
        assert engine.num_class == NUM_CLASS and engine.classes is None
        assert engine.preprocess == Preprocess((40, 56), 120, 8)
        photo = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
        assert engine.predict_image(photo).labels.shape == (37, 53)


def test_class_names_and_preprocessing_are_compared(files, tmp_path):
    path = files["resnet18dilated"]
    table = tmp_path / "classes.csv"
    table.write_text("Idx,Name\n" + "".join(f"{k + 1},thing{k}\n" for k in range(NUM_CLASS)))
    with pytest.raises(OnnxMismatchError, match=r"the file's class_names\[0\] 'class_0' vs "
                                                r"DATASET.class_table '.*classes.csv': 'thing0'"):
        onnx_engine(path, "resnet18dilated", "DATASET.class_table", str(table))
    with pytest.raises(OnnxMismatchError) as info:
        onnx_engine(path, "resnet18dilated", "DATASET.imgSizes", "(300, 450)",
                    "DATASET.padding_constant", "32")
    msg = str(info.value)
    assert "the file's imgSizes [40, 56] vs config DATASET.imgSizes [300, 450]" in msg
    assert "the file's padding_constant 8 vs config DATASET.padding_constant 32" in msg
    # the whole-image resize rule plays no part in slide mode
    engine = onnx_engine(path, "resnet18dilated", "DATASET.imgSizes", "(300, 450)",
                         "TEST.mode", "slide", "TEST.crop_size", "[32, 32]",
                         "TEST.stride", "[24, 24]")
    assert engine.mode == "slide"


def test_trust_the_file_uses_its_preprocessing_and_classes(tmp_path):
    cfg = load_cfg(CFG, opts_for("resnet18dilated"))
    meta = {k: json.loads(v) for k, v in metadata(cfg).items()}
    meta.update(imgSizes=[48, 64], imgMaxSize=96, padding_constant=16,
                class_names=[f"file{k}" for k in range(NUM_CLASS)],
                class_colors=[[k, 2 * k, 3 * k] for k in range(NUM_CLASS)])
    path = export_tiny(cfg, str(tmp_path / "own.onnx"), {k: json.dumps(v) for k, v in meta.items()})
    with pytest.raises(OnnxMismatchError, match="imgSizes"):
        onnx_engine(path, "mobilenetv2dilated")
    # the config's architecture, class count and sizes are not the file's: the file decides
    engine = onnx_engine(path, "mobilenetv2dilated", "TEST.onnx_trust", "file",
                         "DATASET.num_class", "5")
    assert engine.preprocess == Preprocess((48, 64), 96, 16)
    assert engine.preprocess.metadata()["mean"] == meta["mean"]
    assert engine.num_class == NUM_CLASS
    assert engine.classes.names == tuple(meta["class_names"])
    assert engine.classes.colors.tolist() == meta["class_colors"]
    seg = Segmenter(engine, load_cfg(CFG).DATASET)
    assert seg.names[3] == "file3" and seg.colors[3].tolist() == [3, 6, 9]
    # a dataset sample prepared by the config's sizes is re-prepared by the file's
    from PIL import Image
    photo = np.random.default_rng(1).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    copies = Preprocess((40, 56), 120, 8).scales(Image.fromarray(photo))
    sample = {"img_ori": photo, "img_data": copies}
    by_sample = engine.predict_sample(sample, return_probs=True)
    by_image = engine.predict_image(photo, return_probs=True)
    assert torch.equal(by_sample.probs, by_image.probs)


def test_trust_the_file_uses_its_mean_and_std(files, tmp_path):
    cfg = load_cfg(CFG, opts_for("mobilenetv2dilated"))
    meta = {k: json.loads(v) for k, v in metadata(cfg).items()}
    meta.update(mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0])
    path = export_tiny(cfg, str(tmp_path / "norm.onnx"),
                       {k: json.dumps(v) for k, v in meta.items()})
    with pytest.raises(OnnxMismatchError, match=r"the file's mean \[0.5, 0.5, 0.5\] vs config "
                                                r"the preprocessing rule's mean"):
        onnx_engine(path, "mobilenetv2dilated")
    engine = onnx_engine(path, "mobilenetv2dilated", "TEST.onnx_trust", "file")
    pixels = torch.rand(1, 3, 32, 40)
    imagenet = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    own = (pixels - 0.5) / torch.tensor([0.25, 0.5, 1.0]).view(1, 3, 1, 1)
    raw = engine.backend.session.run(None, {"image": own.numpy()})[0]
    assert np.allclose(engine.backend(imagenet).numpy(), raw, atol=1e-5)


def test_trust_values_and_files_without_metadata(files, tmp_path):
    with pytest.raises(ConfigError, match=r"TEST.onnx_trust: expected one of \['config', "
                                          r"'file'\], got 'maybe'"):
        onnx_engine(files["resnet18dilated"], "resnet18dilated", "TEST.onnx_trust", "maybe")
    bare = export_tiny(load_cfg(CFG, opts_for("resnet18dilated")), str(tmp_path / "bare.onnx"),
                       {})
    # without metadata only the class count (output channels) can be compared
    assert onnx_engine(bare, "resnet18dilated").num_class == NUM_CLASS
    with pytest.raises(ConfigError, match="onnx_trust file needs the metadata"):
        onnx_engine(bare, "resnet18dilated", "TEST.onnx_trust", "file")


def test_test_script_refuses_a_mismatch_in_one_line(files, tmp_path):
    photo = tmp_path / "photo.png"
    from PIL import Image
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(photo)
    res = run_script("test.py", "--imgs", photo, "--cfg", CFG, "--gpu", "cpu",
                     *opts_for("mobilenetv2dilated", "TEST.backend", "onnxruntime",
                               "TEST.onnx", files["resnet18dilated"],
                               "TEST.result", tmp_path / "out"))
    assert res.returncode == 1, res.stderr[-2000:]
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "arch_encoder 'resnet18dilated' vs config MODEL.arch_encoder 'mobilenetv2dilated'" \
        in lines[0]
