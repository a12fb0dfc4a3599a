"""Helpers shared by the tests: the parity weight rule and case loading."""
from __future__ import annotations

import contextlib
import os

import torch

# the parity/README.md weight rule; the benchmark builds its models with it too
from mit_semseg.benchmark import rule_tensor  # noqa: F401  (re-exported)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PARITY_DIR = os.path.join(HERE, "models", "parity")
PARITY_EXTRA_DIR = os.path.join(HERE, "models", "parity_extra")


def rule_state_dict(keys) -> dict[str, torch.Tensor]:
    """A state dict for ``[(key, shape, dtype), ...]`` filled by the parity rule."""
    return {k: rule_tensor(k, s) for k, s, *_ in keys}


def load_case(name: str, folder: str = PARITY_DIR) -> dict:
    return torch.load(os.path.join(folder, name + ".pt"), weights_only=False)


def parity_names(folder: str = PARITY_DIR) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".pt"))


def reference_fuse(logits, out_size, return_probs=False):
    """The original's procedure written out, as its test.py and eval.py run it:
    resize each [1, C, h, w] score map to ``out_size``, softmax over dim 1,
    scores = scores + probability / count, max over dim 1. Returns
    (labels [H, W] numpy, probs [C, H, W] tensor or None)."""
    import torch
    import torch.nn.functional as F
    scores = torch.zeros(1, logits[0].shape[1], *out_size)
    for x in logits:
        full = F.interpolate(x.float(), size=tuple(out_size), mode="bilinear", align_corners=False)
        scores = scores + F.softmax(full, dim=1) / len(logits)
    labels = torch.max(scores, dim=1).indices[0].numpy()
    return labels, (scores[0] if return_probs else None)


def assert_same_labels_up_to_ties(labels, probs, margin=1e-5):
    """``labels`` equal ``probs.argmax(0)`` wherever the two best classes of
    ``probs`` ([C, H, W]) are more than ``margin`` apart (closer ones may go
    either way under float32 rounding of the scores)."""
    import numpy as np
    top2 = probs.topk(2, dim=0).values
    decided = ((top2[0] - top2[1]) > margin).numpy()
    want = probs.argmax(0).numpy()
    bad = int((np.asarray(labels)[decided] != want[decided]).sum())
    assert bad == 0, f"{bad} decided pixels differ"


# ---------------------------------------------------------------- tiny models and scripts

CFG = os.path.join(ROOT, "config", "synthetic-demo.yaml")
NUM_CLASS = 8


def make_tiny_checkpoint(folder, num_class=NUM_CLASS, epoch=1, seed=0):
    """Random resnet18dilated + c1 weights saved as DIR/{encoder,decoder}_epoch_<epoch>.pth."""
    from mit_semseg.models import ModelBuilder
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    enc = ModelBuilder.build_encoder("resnet18dilated", 512, "", pretrained=False)
    dec = ModelBuilder.build_decoder("c1", 512, num_class, "")
    torch.save(enc.state_dict(), os.path.join(folder, f"encoder_epoch_{epoch}.pth"))
    torch.save(dec.state_dict(), os.path.join(folder, f"decoder_epoch_{epoch}.pth"))
    return str(folder)


def tiny_opts(ckpt_dir, data_root=None):
    """Overrides of CFG for the tiny checkpoint (and a synthetic dataset folder)."""
    opts = ["DIR", str(ckpt_dir), "MODEL.arch_decoder", "c1", "MODEL.pretrained", "False",
            "DATASET.imgSizes", "(40, 56)", "DATASET.imgMaxSize", "120",
            "VAL.checkpoint", "epoch_1.pth", "TEST.checkpoint", "epoch_1.pth",
            "VAL.workers", "0", "TEST.workers", "0"]
    if data_root is not None:
        opts += ["DATASET.root_dataset", str(data_root),
                 "DATASET.list_val", os.path.join(str(data_root), "validation.odgt")]
    else:  # no dataset folder, so no classes.csv: class_k names
        opts += ["DATASET.class_table", ""]
    return opts


def run_script(script, *args, cwd=ROOT):
    """Run a repository script (test.py, eval.py, ...) or ``-m mit_semseg ...`` in a
    fresh interpreter with one thread; returns the CompletedProcess."""
    import subprocess
    import sys
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    command = ["-m", *script.split()[1:]] if script.startswith("-m ") else \
        [os.path.join(ROOT, script)]
    return subprocess.run([sys.executable, *command, *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


class TinyNet(torch.nn.Module):
    """Stride-8 class scores from a 15-pixel receptive field (so tiles differ from the
    whole image): a fast stand-in network for inference tests."""

    def __init__(self, num_class: int) -> None:
        super().__init__()
        nn = torch.nn
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, num_class, 3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * 3


class CrashAfterCheckpoint(Exception):
    """Raised by ``crash_after_checkpoint`` right after the named state file is written."""


@contextlib.contextmanager
def crash_after_checkpoint(name: str):
    """A run inside the block dies right after writing state file ``name`` (e.g.
    ``state_iter_5.pth``): a crash between two steps, everything before it on disk."""
    import pytest

    import mit_semseg.training as T
    real = T.Trainer.checkpoint

    def checkpoint(trainer, epoch, iteration):
        path = real(trainer, epoch, iteration)
        if os.path.basename(path) == name:
            raise CrashAfterCheckpoint(path)
        return path

    T.Trainer.checkpoint = checkpoint
    try:
        with pytest.raises(CrashAfterCheckpoint):
            yield
    finally:
        T.Trainer.checkpoint = real


def assert_same_epoch_weights(dir_a: str, dir_b: str, epoch: int) -> None:
    """The encoder and decoder of epoch ``epoch`` in two run folders are equal, tensor
    for tensor (a resumed run against the uninterrupted one)."""
    from mit_semseg.checkpoints.files import load_file
    for kind in ("encoder", "decoder"):
        a = load_file(os.path.join(dir_a, f"{kind}_epoch_{epoch}.pth"))
        b = load_file(os.path.join(dir_b, f"{kind}_epoch_{epoch}.pth"))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{kind} {key} differs after resume"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(cfg, folder, nproc: int = 2, timeout: float = 300):
    """``torchrun --nproc_per_node nproc train.py`` on the CPU over ``cfg`` (written to
    ``folder/cfg.yaml``); asserts that it succeeded and returns the finished process."""
    import subprocess
    import sys
    cfg_file = os.path.join(str(folder), "cfg.yaml")
    with open(cfg_file, "w") as fh:
        fh.write(cfg.dump())
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         os.path.join(ROOT, "train.py"), "--cfg", cfg_file, "--gpus", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def assert_model_folder_round_trip(model_cfg, folder, image) -> None:
    """A Segmenter saved as a model folder and loaded back labels ``image`` the same."""
    import numpy as np

    from mit_semseg.inference import Segmenter
    seg = Segmenter.from_config(model_cfg, device="cpu")
    again = Segmenter.from_pretrained(seg.save_pretrained(str(folder)), device="cpu")
    assert np.array_equal(again(image), seg(image))
