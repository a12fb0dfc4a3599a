"""Released-model fetcher: URLs and folders match the presets; a final file is
only ever complete; the offline error names the URL and the destination (no
network used: urlopen is replaced). End-to-end runs against a real HTTP server
are in tests/checkpoints/test_pretrained_command.py."""
import io
import os
import urllib.error
import urllib.request

import pytest

from mit_semseg.checkpoints import released as pretrained
from mit_semseg.commands.pretrained import main as pretrained_main
from mit_semseg.config import load_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name", sorted(pretrained.RELEASED_MODELS))
def test_released_models_match_their_presets(name):
    model = pretrained.RELEASED_MODELS[name]
    cfg = load_cfg(os.path.join(ROOT, model.config))
    assert os.path.basename(cfg.DIR) == name
    assert cfg.TEST.checkpoint == cfg.VAL.checkpoint == model.checkpoint


@pytest.fixture(autouse=True)
def _no_mirrors(monkeypatch):
    monkeypatch.delenv("MIT_SEMSEG_MIRRORS", raising=False)


class FakeResponse(io.BytesIO):
    status = 200

    def __init__(self, data):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_fetch_downloads_both_files_to_the_preset_folder(tmp_path, monkeypatch):
    seen = []

    def fake_urlopen(request, timeout):
        seen.append(request.full_url)
        return FakeResponse(b"weights of " + request.full_url.encode())
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    enc, dec = pretrained.fetch_model("ade20k-hrnetv2", str(tmp_path), quiet=True)
    base = "http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-hrnetv2-c1/"
    assert seen == [base + "encoder_epoch_30.pth", base + "decoder_epoch_30.pth"]
    assert enc == str(tmp_path / "ade20k-hrnetv2-c1" / "encoder_epoch_30.pth")
    assert open(dec, "rb").read() == b"weights of " + seen[1].encode()
    # present files are kept (their hashes recorded and checked), nothing is downloaded again
    pretrained.fetch_model("ade20k-hrnetv2-c1", str(tmp_path), quiet=True)
    assert len(seen) == 2
    assert sorted(os.listdir(tmp_path / "ade20k-hrnetv2-c1")) == \
        ["SHA256SUMS", "decoder_epoch_30.pth", "encoder_epoch_30.pth"]


def test_offline_error_names_url_and_destination(tmp_path, monkeypatch, capsys):
    def offline(request, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code = pretrained_main(["ade20k-resnet50dilated-ppm_deepsup", "--dest", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert ("http://sceneparsing.csail.mit.edu/model/pytorch/"
            "ade20k-resnet50dilated-ppm_deepsup/encoder_epoch_20.pth") in err
    assert str(tmp_path / "ade20k-resnet50dilated-ppm_deepsup" / "encoder_epoch_20.pth") in err
    assert "name resolution" in err and "Traceback" not in err
    # nothing half-written is left behind
    assert os.listdir(tmp_path / "ade20k-resnet50dilated-ppm_deepsup") == []


def test_truncated_download_leaves_no_final_file(tmp_path, monkeypatch):
    class Short(FakeResponse):
        def __init__(self):
            super().__init__(b"abc")
            self.headers = {"Content-Length": "10"}
    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout: Short())
    dest = tmp_path / "x.pth"
    with pytest.raises(pretrained.DownloadError, match="3 of 10 bytes.*resumes"):
        pretrained.download("http://example.invalid/x.pth", str(dest), quiet=True)
    assert os.listdir(tmp_path) == ["x.pth.part"]  # what arrived, for the next try to resume


def test_unknown_name_and_list(capsys):
    assert pretrained_main(["ade20k-nope"]) == 1
    assert "unknown released model 'ade20k-nope'" in capsys.readouterr().err
    assert pretrained_main(["--list"]) == 0
    assert "ade20k-resnet50dilated-ppm_deepsup" in capsys.readouterr().out
