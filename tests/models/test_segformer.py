"""SegFormer: the MiT encoder, the all-MLP head, the transformers key map.

The equality test against transformers' SegformerForSemanticSegmentation runs
only where transformers is installed (a separate environment; it is no
dependency of the package) and is skipped elsewhere.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mit_semseg.models import SegmentationModule, WeightsError
from mit_semseg.models.network import SegmentationNetwork, build_decoder, build_encoder
from mit_semseg.models.segformer import (MIT_SIZES, SegFormerHead, convert_hf_segformer,
                                         read_hf_state)
from mit_semseg.models.weights import load_weights

pytestmark = pytest.mark.usefixtures("one_thread")

# a MiT small enough for a test: four stages of one block
TINY = {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 3, 4]}


def _tiny_network(num_class=5, head="segformer_head", **options):
    torch.manual_seed(0)
    enc = build_encoder("mit_b0", options={**TINY, **options})
    dec = build_decoder(head, num_class=num_class, fc_dim=0, in_channels=enc.out_channels)
    return SegmentationNetwork(enc, dec)


def test_mit_maps_are_at_strides_4_to_32_for_any_size():
    net = _tiny_network()
    for size in ((64, 64), (61, 83)):
        maps = net.encoder(torch.randn(2, 3, *size), return_feature_maps=True)
        assert [m.shape[1] for m in maps] == [8, 16, 24, 32] == list(net.encoder.out_channels)
        side = list(size)
        for m, stride in zip(maps, (4, 2, 2, 2)):
            side = [-(-s // stride) for s in side]  # ceiling
            assert list(m.shape[2:]) == side
        assert net.encoder(torch.randn(1, 3, *size))[0].shape == maps[-1][:1].shape
        assert net(torch.randn(1, 3, *size)).shape == (1, 5) + maps[0].shape[2:]


def test_released_sizes_have_the_papers_encoder_parameters():
    # SegFormer paper, Table 1/6: MiT-B0 3.7M (3.3M encoder + 0.4M head), B2 27.5M (24.2M
    # encoder); channels 32..256 for B0 and 64..512 above.
    counts = {}
    for arch in ("mit_b0", "mit_b2"):
        enc = build_encoder(arch)
        counts[arch] = sum(p.numel() for p in enc.parameters())
    assert round(counts["mit_b0"] / 1e6, 1) == 3.3
    assert round(counts["mit_b2"] / 1e6, 1) == 24.2
    assert MIT_SIZES["mit_b5"].depths == (3, 6, 40, 3)
    head = build_decoder("segformer_head", num_class=150, fc_dim=0,
                         in_channels=MIT_SIZES["mit_b0"].embed_dims)
    assert round(sum(p.numel() for p in head.parameters()) / 1e6, 1) == 0.4
    head = build_decoder("segformer_head_768", num_class=150, fc_dim=0,
                         in_channels=MIT_SIZES["mit_b2"].embed_dims)
    assert head.fuse.out_channels == 768 and head.class_layers == ("classifier",)


def test_a_training_step_reaches_every_parameter_and_drop_path_is_random_in_training():
    net = _tiny_network(drop_path_rate=0.5)
    module = SegmentationModule.from_network(net, nn.NLLLoss(ignore_index=-1)).train()
    x = torch.randn(2, 3, 64, 64)
    label = torch.randint(-1, 5, (2, 16, 16))
    loss, acc = module({"img_data": x, "seg_label": label})
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in module.parameters())
    rates = [b.drop_path for s in net.encoder.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5)  # linear over the blocks
    torch.manual_seed(1)
    a = net.encoder(x)[0]
    b = net.encoder(x)[0]
    assert not torch.equal(a, b)
    net.eval()
    assert torch.equal(net.encoder(x)[0], net.encoder(x)[0])


def test_unknown_encoder_option_is_an_error_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['drop'\] are not options of mit_b0.*drop_path_rate"):
        build_encoder("mit_b0", options={"drop": 0.1})
    with pytest.raises(ValueError, match="segformer_head needs an encoder that declares"):
        build_decoder("segformer_head", num_class=3, fc_dim=256)


# ----------------------------------------------------------------------------- the key map

def _hf_names(net: SegmentationNetwork) -> dict[str, torch.Tensor]:
    """The network's weights under transformers' names, written out by hand (the
    inverse of the key map, so that a wrong map cannot check itself)."""
    out = {}
    for key, value in net.encoder.state_dict().items():
        parts = key.split(".")
        i = parts[1]
        if parts[2] == "embed":
            name = {"proj": "proj", "norm": "layer_norm"}[parts[3]]
            out[f"segformer.encoder.patch_embeddings.{i}.{name}.{parts[4]}"] = value
        elif parts[2] == "norm":
            out[f"segformer.encoder.layer_norm.{i}.{parts[3]}"] = value
        else:
            j, rest = parts[3], parts[4:]
            sub = {"norm1": "layer_norm_1", "norm2": "layer_norm_2",
                   "attn.q": "attention.self.query", "attn.k": "attention.self.key",
                   "attn.v": "attention.self.value", "attn.sr": "attention.self.sr",
                   "attn.sr_norm": "attention.self.layer_norm",
                   "attn.proj": "attention.output.dense", "ffn.fc1": "mlp.dense1",
                   "ffn.dwconv": "mlp.dwconv.dwconv", "ffn.fc2": "mlp.dense2"}
            head = ".".join(rest[:-1])
            out[f"segformer.encoder.block.{i}.{j}.{sub[head]}.{rest[-1]}"] = value
    for key, value in net.decoder.state_dict().items():
        module, param = key.rsplit(".", 1)
        if param.startswith("_"):
            continue  # synchronised BatchNorm bookkeeping: transformers has none
        if module.startswith("mlps."):
            name = f"decode_head.linear_c.{module.split('.')[1]}.proj"
        else:
            name = "decode_head." + {"fuse": "linear_fuse", "bn": "batch_norm",
                                     "classifier": "classifier"}[module]
        out[f"{name}.{param}"] = value
    return out


def test_key_map_loads_every_key_strictly_and_reports_what_it_does_not_use():
    source = _tiny_network()
    hf = _hf_names(source)
    converted = convert_hf_segformer(hf)
    assert converted.not_used == []
    target = _tiny_network()
    for p in target.parameters():
        nn.init.zeros_(p)
    load_weights(target.encoder, converted.encoder, "hf")
    load_weights(target.decoder, converted.decoder, "hf")
    for a, b in ((source.encoder, target.encoder), (source.decoder, target.decoder)):
        for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), k

    # an ImageNet (encoder-only) file: its classifier is reported, not loaded
    encoder_only = {k: v for k, v in hf.items() if k.startswith("segformer.")}
    encoder_only["classifier.weight"] = torch.zeros(1000, 32)
    encoder_only["classifier.bias"] = torch.zeros(1000)
    converted = convert_hf_segformer(encoder_only)
    assert converted.decoder is None
    assert converted.not_used == ["classifier.weight", "classifier.bias"]

    with pytest.raises(WeightsError, match="not a transformers SegFormer's: decode_head.extra.w"):
        convert_hf_segformer({**hf, "decode_head.extra.w": torch.zeros(1)}, "f.safetensors")
    with pytest.raises(WeightsError, match="no segformer.encoder"):
        convert_hf_segformer({"classifier.weight": torch.zeros(1)})
    # a file of another size: the strict load names the keys
    b0_keys = convert_hf_segformer(hf).encoder
    with pytest.raises(WeightsError, match="wrong shapes"):
        load_weights(build_encoder("mit_b0"), b0_keys, "tiny file")


# ----------------------------------------------------------------------------- transformers

@pytest.mark.transformers
def test_equal_to_transformers_segformer_on_the_same_weights(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    torch.manual_seed(0)
    config = transformers.SegformerConfig(
        num_channels=3, num_encoder_blocks=4, depths=[1, 2, 1, 1], sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 3, 4], mlp_ratios=[4] * 4,
        decoder_hidden_size=16, num_labels=5)
    reference = transformers.SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():  # BatchNorm statistics that matter
        reference.decode_head.batch_norm.running_mean.uniform_(-0.5, 0.5)
        reference.decode_head.batch_norm.running_var.uniform_(0.5, 2.0)
        reference.decode_head.batch_norm.weight.uniform_(0.5, 1.5)
        reference.decode_head.classifier.weight.normal_(0.0, 1.0)  # scores of order 1
    # the file as transformers writes it (the released checkpoints' key names, which
    # transformers 5 renames in memory and back on saving)
    reference.save_pretrained(str(tmp_path))
    path = str(tmp_path / "model.safetensors")
    converted = convert_hf_segformer(read_hf_state(path), path)
    assert converted.not_used == []
    diffs = {}
    # transformers' LayerNorms use eps 1e-5; the released weights were trained with 1e-6
    for eps in (1e-5, 1e-6):
        options = {"embed_dims": [8, 16, 24, 32], "depths": [1, 2, 1, 1],
                   "num_heads": [1, 2, 3, 4], "layer_norm_eps": eps}
        enc = build_encoder("mit_b0", converted.encoder, options=options)
        dec = SegFormerHead(num_class=5, in_channels=enc.out_channels, embed_dim=16)
        load_weights(dec, converted.decoder, path)
        net = SegmentationNetwork(enc, dec).eval()
        x = torch.randn(2, 3, 67, 90)
        with torch.no_grad():
            ours_maps = net.features(x)
            out = reference(pixel_values=x, output_hidden_states=True)
            ours = net(x)
        maps = max(float((a - b).abs().max()) for a, b in zip(ours_maps, out.hidden_states))
        scores = float((ours - out.logits).abs().max())
        diffs[eps] = (maps, scores)
    with capsys.disabled():
        print(f"\n[segformer vs transformers] max |diff| feature maps / scores: "
              f"eps 1e-5 {diffs[1e-5][0]:.2e} / {diffs[1e-5][1]:.2e}, "
              f"eps 1e-6 (default) {diffs[1e-6][0]:.2e} / {diffs[1e-6][1]:.2e}")
    assert diffs[1e-5][0] < 1e-5 and diffs[1e-5][1] < 1e-5
    assert diffs[1e-6][1] < 1e-3


def test_import_command_writes_files_the_preset_loads(tmp_path, capsys):
    from mit_semseg.commands import models as command
    from mit_semseg.config import load_cfg
    from mit_semseg.models import build_model
    cfg = load_cfg("config/ade20k-segformer_b0.yaml", ["MODEL.pretrained", "False"])
    torch.manual_seed(0)
    source = build_model(cfg).eval()
    src = str(tmp_path / "pytorch_model.bin")
    torch.save(_hf_names(source), src)
    out = str(tmp_path / "ckpt")
    assert command.main(["import-segformer", src, "--out", out, "--cfg",
                         "config/ade20k-segformer_b0.yaml"]) == 0
    printed = capsys.readouterr().out
    assert "encoder_hf.pth" in printed and "decoder_hf.pth" in printed
    net = build_model(cfg, (f"{out}/encoder_hf.pth", f"{out}/decoder_hf.pth")).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(net(x), source(x))
    # a file that is not a SegFormer's: one line, exit 1
    torch.save({"backbone.conv.weight": torch.zeros(1)}, src)
    assert command.main(["import-segformer", src, "--out", out]) == 1
    assert "error:" in capsys.readouterr().err
