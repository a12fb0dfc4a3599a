"""Checkpoint downloads: resuming, restarting, falling back to mirrors and local
copies, refusing wrong bytes. A real HTTP server runs on 127.0.0.1 in a thread."""
import hashlib
import json
import os
import random
import re
import tarfile
import zipfile

import pytest
import torch

from _server import closed_url, site  # noqa: F401 (fixtures)

from mit_semseg.checkpoints.download import (MIRRORS_ENV, MIT_HOST, DownloadError,
                                             HashMismatchError, download, fetch_file,
                                             resolve_sources)
from mit_semseg.checkpoints.formats import read_weights, write_weights
from mit_semseg.checkpoints.ledger import SUMS_NAME, read_sums, verify_file, verify_folder

MODEL = "ade20k-resnet18dilated-ppm_deepsup"
NAME = "encoder_epoch_20.pth"
REL = f"{MODEL}/{NAME}"
BODY = random.Random(0).randbytes(600_000)  # more than two read chunks
SHA = hashlib.sha256(BODY).hexdigest()
OTHER = random.Random(1).randbytes(len(BODY))
OTHER_SHA = hashlib.sha256(OTHER).hexdigest()


def _mirror_folder(root, data=BODY):
    path = root / MODEL / NAME
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return root


# ----------------------------------------------------------------------------- download()

def test_cut_download_resumes_with_range(site, tmp_path):
    site.files["/m/" + NAME] = BODY
    site.cut_once.add("/m/" + NAME)
    dest = tmp_path / NAME
    assert download(f"{site.url}/m/{NAME}", str(dest), expected_sha256=SHA, progress=False) \
        == str(dest)
    assert dest.read_bytes() == BODY
    assert site.requests == [("/m/" + NAME, None), ("/m/" + NAME, f"bytes={len(BODY) // 2}-")]
    assert not (tmp_path / (NAME + ".part")).exists()


def test_cut_download_is_kept_and_resumed_by_the_next_call(site, tmp_path):
    site.files["/" + NAME] = BODY
    site.cut_once.add("/" + NAME)
    dest, part = tmp_path / NAME, tmp_path / (NAME + ".part")
    with pytest.raises(DownloadError, match="resumes") as info:
        download(f"{site.url}/{NAME}", str(dest), expected_sha256=SHA, progress=False, attempts=1)
    assert "\n" not in str(info.value)
    assert not dest.exists() and part.read_bytes() == BODY[:len(BODY) // 2]
    download(f"{site.url}/{NAME}", str(dest), expected_sha256=SHA, progress=False)
    assert dest.read_bytes() == BODY
    assert site.requests[-1] == ("/" + NAME, f"bytes={len(BODY) // 2}-")
    assert not part.exists()


def test_server_ignoring_range_restarts_from_zero(site, tmp_path):
    site.files["/" + NAME] = BODY
    site.ranges = False
    dest = tmp_path / NAME
    (tmp_path / (NAME + ".part")).write_bytes(b"stale bytes of an older attempt" * 100)
    download(f"{site.url}/{NAME}", str(dest), expected_sha256=SHA, progress=False)
    assert dest.read_bytes() == BODY
    assert site.requests == [("/" + NAME, "bytes=3100-")]  # asked to resume, got 200


def test_cut_then_range_ignored_restarts_from_zero(site, tmp_path):
    site.files["/" + NAME] = BODY
    site.cut_once.add("/" + NAME)
    site.ranges = False
    dest = tmp_path / NAME
    download(f"{site.url}/{NAME}", str(dest), expected_sha256=SHA, progress=False)
    assert dest.read_bytes() == BODY
    assert site.requests == [("/" + NAME, None), ("/" + NAME, f"bytes={len(BODY) // 2}-")]


def test_range_not_satisfiable(site, tmp_path):
    site.files["/" + NAME] = BODY
    dest, part = tmp_path / NAME, tmp_path / (NAME + ".part")
    part.write_bytes(BODY)  # complete already: the 416 says so, nothing is sent again
    download(f"{site.url}/{NAME}", str(dest), expected_sha256=SHA, progress=False)
    assert dest.read_bytes() == BODY and site.requests == [("/" + NAME, f"bytes={len(BODY)}-")]
    dest.unlink()
    part.write_bytes(BODY + b"junk")  # longer than the file: start over
    download(f"{site.url}/{NAME}", str(dest), expected_sha256=SHA, progress=False)
    assert dest.read_bytes() == BODY
    assert site.requests[1:] == [("/" + NAME, f"bytes={len(BODY) + 4}-"), ("/" + NAME, None)]


def test_resumed_part_of_another_file_gets_one_clean_retry(site, tmp_path):
    site.files["/" + NAME] = BODY
    dest = tmp_path / NAME
    (tmp_path / (NAME + ".part")).write_bytes(OTHER[:1000])
    download(f"{site.url}/{NAME}", str(dest), expected_sha256=SHA, progress=False)
    assert dest.read_bytes() == BODY
    assert site.requests == [("/" + NAME, "bytes=1000-"), ("/" + NAME, None)]


def test_wrong_hash_is_refused_and_deleted(site, tmp_path):
    site.files["/" + NAME] = OTHER
    dest = tmp_path / NAME
    with pytest.raises(HashMismatchError) as info:
        download(f"{site.url}/{NAME}", str(dest), expected_sha256=SHA, progress=False)
    message = str(info.value)
    assert "\n" not in message and NAME in message and SHA in message and OTHER_SHA in message
    assert "deleted" in message
    assert os.listdir(tmp_path) == []


def test_http_error_names_the_url(site, tmp_path):
    with pytest.raises(DownloadError, match=r"/missing.pth: HTTP 404"):
        download(f"{site.url}/missing.pth", str(tmp_path / "x.pth"), progress=False)
    assert os.listdir(tmp_path) == []


def test_progress_bar_and_file_urls(tmp_path, capsys):
    src = tmp_path / "src.bin"
    src.write_bytes(BODY)
    dest = tmp_path / "out" / "copy.bin"
    download(src.as_uri(), str(dest), expected_sha256=SHA, progress=True)
    assert dest.read_bytes() == BODY
    assert "copy.bin" in capsys.readouterr().err


# ----------------------------------------------------------------------------- sources

def test_resolve_sources_order_and_splitting():
    env = {MIRRORS_ENV: f"http://127.0.0.1:8080/models{os.pathsep}/mnt/share,~/m.zip"}
    sources = resolve_sources(mirrors=["https://flag.example/m"], env=env,
                              config="/srv/models, https://flag.example/m/")
    assert sources == [MIT_HOST, "https://flag.example/m", "http://127.0.0.1:8080/models",
                       "/mnt/share", "~/m.zip", "/srv/models"]
    assert resolve_sources(env={}) == [MIT_HOST]


def test_falls_back_past_404_and_refused_to_a_local_folder(site, closed_url, tmp_path):
    folder = _mirror_folder(tmp_path / "mirror")
    dest = tmp_path / "ckpt" / MODEL / NAME
    sources = [site.url + "/empty", closed_url, str(folder)]
    assert fetch_file(REL, str(dest), sources, progress=False, manifest={}) == str(dest)
    assert dest.read_bytes() == BODY
    assert site.requests == [(f"/empty/{REL}", None)]
    assert read_sums(str(dest.parent)) == {NAME: SHA}  # recorded at the first download


def test_falls_back_from_refused_to_http(site, closed_url, tmp_path):
    site.files[f"/pub/{REL}"] = BODY
    dest = tmp_path / MODEL / NAME
    fetch_file(REL, str(dest), [closed_url, site.url + "/pub/"], expected_sha256=SHA,
               progress=False, manifest={})
    assert dest.read_bytes() == BODY


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_sources(tmp_path, kind):
    archive = tmp_path / f"models.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr(f"semseg/{REL}", BODY)  # under one folder
    else:
        folder = _mirror_folder(tmp_path / "tree")
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(folder / MODEL, arcname=MODEL)  # at the top
    dest = tmp_path / "ckpt" / MODEL / NAME
    fetch_file(REL, str(dest), [str(tmp_path / "absent.zip"), str(archive)], progress=False,
               manifest={})
    assert dest.read_bytes() == BODY


def test_wrong_bytes_against_the_manifest_are_refused(site, tmp_path):
    site.files[f"/{REL}"] = OTHER
    dest = tmp_path / MODEL / NAME
    with pytest.raises(DownloadError) as info:
        fetch_file(REL, str(dest), [site.url], progress=False, manifest={REL: SHA})
    message = str(info.value)
    assert f"1. {site.url}: SHA-256 mismatch" in message and SHA in message and OTHER_SHA in message
    assert isinstance(info.value.failures[0][1], HashMismatchError)
    assert not dest.parent.exists() or os.listdir(dest.parent) == []
    # with a second source that has the right bytes, that one is used
    good = _mirror_folder(tmp_path / "good")
    fetch_file(REL, str(dest), [site.url, str(good)], progress=False, manifest={REL: SHA})
    assert dest.read_bytes() == BODY and read_sums(str(dest.parent)) == {NAME: SHA}


def test_sums_beside_a_local_source_are_checked(tmp_path):
    folder = _mirror_folder(tmp_path / "mirror", OTHER)
    (folder / MODEL / SUMS_NAME).write_text(f"{SHA}  {NAME}\n")
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        fetch_file(REL, str(tmp_path / "ckpt" / NAME), [str(folder)], progress=False, manifest={})
    assert not (tmp_path / "ckpt" / NAME).exists()


def test_recorded_hash_guards_later_loads(tmp_path):
    """A file whose bytes change after the first download is refused by
    verify_folder / verify_file / read_weights and fetched again by fetch_file."""
    state = {"weight": torch.arange(6.0).reshape(2, 3), "num_batches_tracked": torch.tensor(7)}
    source = tmp_path / "mirror" / MODEL / NAME
    write_weights(state, str(source))
    folder = tmp_path / "ckpt" / MODEL
    dest = folder / NAME
    fetch_file(REL, str(dest), [str(tmp_path / "mirror")], progress=False, manifest={})
    good_sha = hashlib.sha256(source.read_bytes()).hexdigest()
    assert (folder / SUMS_NAME).read_text() == f"{good_sha}  {NAME}\n"
    assert verify_folder(str(folder)) == {NAME: good_sha}
    assert torch.equal(read_weights(str(dest))["weight"], state["weight"])

    data = bytearray(dest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    for check in (lambda: verify_folder(str(folder)), lambda: verify_file(str(dest)),
                  lambda: read_weights(str(dest))):
        dest.write_bytes(bytes(data))
        with pytest.raises(HashMismatchError) as info:
            check()
        message = str(info.value)
        assert "\n" not in message and str(dest) in message and good_sha in message
        assert hashlib.sha256(data).hexdigest() in message and f"{dest}.corrupt" in message
        assert not dest.exists() and (folder / (NAME + ".corrupt")).read_bytes() == data

    dest.write_bytes(bytes(data))
    fetch_file(REL, str(dest), [str(tmp_path / "mirror")], progress=False, manifest={})
    assert dest.read_bytes() == source.read_bytes()


def test_every_failure_is_listed(site, closed_url, tmp_path):
    dest = tmp_path / MODEL / NAME
    sources = [closed_url, str(tmp_path / "no-such-folder"), site.url + "/nothing"]
    with pytest.raises(DownloadError) as info:
        fetch_file(REL, str(dest), sources, progress=False, manifest={})
    message = str(info.value)
    lines = message.splitlines()
    assert lines[0] == f"could not fetch {REL} to {dest}; tried 3 source(s):"
    assert lines[1].startswith(f"  1. {closed_url}: ") and "refused" in lines[1].lower()
    assert lines[2] == f"  2. {tmp_path / 'no-such-folder'}: folder not found: " \
                       f"{tmp_path / 'no-such-folder'}"
    assert lines[3].startswith(f"  3. {site.url}/nothing: ") and "HTTP 404" in lines[3]
    assert "offline" not in message  # one server answered
    assert MIRRORS_ENV in lines[-1] and str(dest) in lines[-1]
    assert [source for source, _ in info.value.failures] == sources
    assert not dest.parent.exists() or os.listdir(dest.parent) == []


def test_offline_is_said_plainly(closed_url, tmp_path):
    with pytest.raises(DownloadError, match=r"(?s)1\. .*offline.*" + MIRRORS_ENV):
        fetch_file(REL, str(tmp_path / NAME), [closed_url], progress=False, manifest={})


def test_shipped_manifest_is_well_formed():
    """A comment and ``{"<model>/<file>": sha256}`` (empty while no hash is known)."""
    from mit_semseg.checkpoints import released as module
    with open(os.path.join(os.path.dirname(module.__file__), "released_sha256.json")) as fh:
        data = json.load(fh)
    assert set(data) == {"_comment", "sha256"}
    for relpath, digest in data["sha256"].items():
        assert re.fullmatch(r"ade20k-[\w.-]+/(encoder|decoder)_epoch_\d+\.pth", relpath)
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert module.released_sha256(REL) == data["sha256"].get(REL)


def test_config_mirrors_come_last_and_reach_the_pretrained_command(tmp_path, monkeypatch):
    """MODEL.mirrors (``config``) are tried after the host, --mirror and the
    environment variable; the pretrained command passes them from --cfg; nothing is
    remembered from one call to the next."""
    from mit_semseg.checkpoints import download as dl
    sources = dl.resolve_sources(["http://flag.example"],
                                 env={dl.MIRRORS_ENV: "http://env.example"},
                                 config=["http://cfg.example/a", str(tmp_path)])
    assert sources == [dl.MIT_HOST, "http://flag.example", "http://env.example",
                       "http://cfg.example/a", str(tmp_path)]
    assert dl.resolve_sources(env={}) == [dl.MIT_HOST]  # no mirrors kept from the call before
    assert not hasattr(dl, "configure_mirrors")
    cfg = tmp_path / "m.yaml"
    cfg.write_text("MODEL:\n  mirrors: ['http://from-yaml.example']\n")
    seen = {}

    def fetch_model(key, dest, mirrors=(), config_mirrors=(), progress=True):
        seen["sources"] = dl.resolve_sources(mirrors, env={}, config=config_mirrors)
        raise dl.DownloadError("stop here")

    monkeypatch.setattr("mit_semseg.checkpoints.released.fetch_model", fetch_model)
    from mit_semseg.commands.pretrained import main
    assert main(["ade20k-hrnetv2-c1", "--cfg", str(cfg), "--quiet"]) == 1
    assert seen["sources"][-1] == "http://from-yaml.example"


# ----------------------------------------------------------------------------- explicit mirrors

IMAGENET = "pretrained_resnet/resnet18-imagenet.pth"


def test_fetch_url_takes_its_mirrors_explicitly(site, closed_url, tmp_path,  # noqa: F811
                                                monkeypatch):
    """The URL's host refused: the given mirrors, then MIT_SEMSEG_MIRRORS (read at the
    call), then the config's mirrors are tried, in that order."""
    from mit_semseg.checkpoints.download import fetch_url
    folder = tmp_path / "mirror"
    (folder / "pretrained_resnet").mkdir(parents=True)
    (folder / IMAGENET).write_bytes(BODY)
    monkeypatch.setenv(MIRRORS_ENV, site.url + "/env")
    url = f"{closed_url}/{IMAGENET}"
    dest = tmp_path / "pretrained" / "resnet18-imagenet.pth"
    fetch_url(url, str(dest), mirrors=[site.url + "/flag"], config_mirrors=[str(folder)],
              progress=False)
    assert dest.read_bytes() == BODY
    assert site.requests == [(f"/flag/{IMAGENET}", None), (f"/env/{IMAGENET}", None)]
    assert read_sums(str(dest.parent)) == {dest.name: SHA}
    # without the mirror folder the same call has nowhere to get it from
    monkeypatch.delenv(MIRRORS_ENV)
    with pytest.raises(DownloadError, match="tried 1 source"):
        fetch_url(url, str(tmp_path / "other" / dest.name), progress=False)


def test_load_pretrained_reads_the_config_mirrors(closed_url, tmp_path,  # noqa: F811
                                                  monkeypatch):
    """ImageNet weights from a local folder mirror given as ``mirrors`` (the config's
    MODEL.mirrors): downloaded once, loaded, recorded; the next call without mirrors
    finds nothing but the cache, and a fresh cache without mirrors is an error."""
    from mit_semseg.models.weights import WeightsError, load_pretrained, load_url
    monkeypatch.delenv(MIRRORS_ENV, raising=False)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    folder = tmp_path / "mirror"
    (folder / "pretrained_resnet").mkdir(parents=True)
    torch.save({**state, "fc.weight": torch.zeros(1)}, folder / IMAGENET)  # head not used
    url = f"{closed_url}/{IMAGENET}"
    cache = tmp_path / "pretrained"
    fresh = torch.nn.Linear(3, 2)
    load_pretrained(fresh, url, str(cache), mirrors=[str(folder)])
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    assert set(read_sums(str(cache))) == {"resnet18-imagenet.pth"}
    assert torch.equal(load_url(url, str(cache))["weight"], state["weight"])  # cached
    with pytest.raises(WeightsError, match="MIT_SEMSEG_MIRRORS"):
        load_url(url, str(tmp_path / "empty-cache"))
