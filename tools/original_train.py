"""The original's training loop next to this package's, iteration by iteration
(a developer tool, not installed).

    python tools/original_train.py --original-python /path/to/orig/venv/bin/python \\
        --original-repo /path/to/semantic-segmentation-pytorch --out /tmp/cmp \\
        [--pair mobilenetv2dilated+c1_deepsup] [--iters 150] [--batch 4] [--seed 304]

Makes a synthetic data set and one set of initial weights, then trains twice on
the CPU with one device and no loader workers:

* the original: its repository's ``train.py`` functions (``train``,
  ``create_optimizers``, ``checkpoint``) and its package's ``TrainDataset``,
  ``ModelBuilder`` and ``SegmentationModule``, run by the original's interpreter
  in a child process. Its train.py passes the loader's list of one batch to a
  bare ``SegmentationModule`` on a single device, which indexes it like a dict
  (fails); the child hands the module the list's only element, as
  ``UserScatteredDataParallel`` does on several GPUs. Nothing else is changed.
  ``torch.cuda`` calls are no-ops and torchvision's ``Normalize`` is stood in
  for where torchvision does not import (``tools/cpu_shim.py``).
* this package: ``train.py ... TRAIN.exact True TRAIN.stream original``.

Both log every iteration (``TRAIN.disp_iter 1``); the tool prints the first
iteration whose loss differs (or "all equal") and compares the final weights.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mit_semseg.data.synthetic import make_synthetic_dataset  # noqa: E402
from mit_semseg.models import ModelBuilder  # noqa: E402

# Runs under the original's interpreter: only its package, torch and the stdlib.
_CHILD = textwrap.dedent('''
    import json, os, random, runpy, sys
    import torch
    runpy.run_path(sys.argv[1])["install"]()  # tools/cpu_shim.py's patches, not its main
    repo, cfg_path, out = sys.argv[2], sys.argv[3], sys.argv[4]
    sys.path.insert(0, repo)
    import train as original
    from mit_semseg.config import cfg
    from mit_semseg.dataset import TrainDataset
    from mit_semseg.models import ModelBuilder, SegmentationModule
    from mit_semseg.lib.nn import user_scattered_collate
    cfg.merge_from_file(cfg_path)
    cfg.TRAIN.max_iters = cfg.TRAIN.epoch_iters * cfg.TRAIN.num_epoch
    cfg.TRAIN.running_lr_encoder = cfg.TRAIN.lr_encoder
    cfg.TRAIN.running_lr_decoder = cfg.TRAIN.lr_decoder
    random.seed(cfg.TRAIN.seed)
    torch.manual_seed(cfg.TRAIN.seed)
    # the original main(), one device, the list of one batch unwrapped
    enc = ModelBuilder.build_encoder(arch=cfg.MODEL.arch_encoder.lower(),
                                     fc_dim=cfg.MODEL.fc_dim, weights=cfg.MODEL.weights_encoder)
    dec = ModelBuilder.build_decoder(arch=cfg.MODEL.arch_decoder.lower(),
                                     fc_dim=cfg.MODEL.fc_dim, num_class=cfg.DATASET.num_class,
                                     weights=cfg.MODEL.weights_decoder)
    crit = torch.nn.NLLLoss(ignore_index=-1)
    deep = cfg.TRAIN.deep_sup_scale if cfg.MODEL.arch_decoder.endswith("deepsup") else None
    module = SegmentationModule(enc, dec, crit, deep)
    dataset = TrainDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_train, cfg.DATASET,
                           batch_per_gpu=cfg.TRAIN.batch_size_per_gpu)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False,
                                         collate_fn=user_scattered_collate,
                                         num_workers=cfg.TRAIN.workers, drop_last=True,
                                         pin_memory=False)
    iterator = iter(loader)

    class OneDevice(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
        def forward(self, batches):
            return self.inner(batches[0])

    nets = (enc, dec, crit)
    optimizers = original.create_optimizers(nets, cfg)
    history = {"train": {"epoch": [], "loss": [], "acc": []}}
    os.makedirs(cfg.DIR, exist_ok=True)
    for epoch in range(cfg.TRAIN.start_epoch, cfg.TRAIN.num_epoch):
        original.train(OneDevice(module), iterator, optimizers, history, epoch + 1, cfg)
        original.checkpoint(nets, history, cfg, epoch + 1)
    with open(out, "w") as fh:
        json.dump(history["train"], fh)
''')


def _config(args: argparse.Namespace, folder: str, lists: dict, init: tuple[str, str]) -> str:
    enc, dec = args.pair.split("+")
    fc_dim = {"mobilenetv2dilated": 320, "resnet18dilated": 512, "resnet50dilated": 2048,
              "hrnetv2": 720}[enc]
    text = textwrap.dedent(f"""\
        DATASET:
          root_dataset: "{os.path.dirname(lists['training'])}"
          list_train: "{lists['training']}"
          list_val: "{lists['validation']}"
          num_class: {args.num_class}
          imgSizes: (96, 112, 128)
          imgMaxSize: 160
          padding_constant: 8
          segm_downsampling_rate: 8
        MODEL:
          arch_encoder: "{enc}"
          arch_decoder: "{dec}"
          fc_dim: {fc_dim}
          weights_encoder: "{init[0]}"
          weights_decoder: "{init[1]}"
        TRAIN:
          batch_size_per_gpu: {args.batch}
          num_epoch: 1
          epoch_iters: {args.iters}
          lr_encoder: 0.02
          lr_decoder: 0.02
          workers: 0
          disp_iter: 1
          seed: {args.seed}
        DIR: "{folder}"
        """)
    path = os.path.join(folder + ".yaml")
    with open(path, "w") as fh:
        fh.write(text)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--original-python", required=True)
    p.add_argument("--original-repo", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--pair", default="mobilenetv2dilated+c1_deepsup")
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=304)
    p.add_argument("--num-class", type=int, default=8)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lists = make_synthetic_dataset(os.path.join(args.out, "data"), num_train=40, num_val=4,
                                   num_class=args.num_class)
    enc_arch, dec_arch = args.pair.split("+")
    torch.manual_seed(0)
    init = (os.path.join(args.out, "init_encoder.pth"), os.path.join(args.out, "init_decoder.pth"))
    fc = {"mobilenetv2dilated": 320, "resnet18dilated": 512, "resnet50dilated": 2048,
          "hrnetv2": 720}[enc_arch]
    torch.save(ModelBuilder.build_encoder(enc_arch, fc, pretrained=False).state_dict(), init[0])
    torch.save(ModelBuilder.build_decoder(dec_arch, fc, args.num_class).state_dict(), init[1])

    runs = {}
    for name in ("original", "ours"):
        folder = os.path.join(args.out, name)
        cfg_path = _config(args, folder, lists, init)
        if name == "original":
            hist = os.path.join(args.out, "original_history.json")
            subprocess.run([args.original_python, "-c", _CHILD,
                            os.path.join(ROOT, "tools", "cpu_shim.py"), args.original_repo,
                            cfg_path, hist], check=True)
            with open(hist) as fh:
                runs[name] = json.load(fh)["loss"]
        else:
            subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--gpus", "cpu",
                            "--cfg", cfg_path, "TRAIN.exact", "True", "TRAIN.stream", "original"],
                           check=True, stdout=subprocess.DEVNULL)
            history = torch.load(os.path.join(folder, "history_epoch_1.pth"), weights_only=False)
            runs[name] = history["train"]["loss"]
    a, b = runs["original"], runs["ours"]
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    print(f"{args.pair}: {len(a)} vs {len(b)} iterations; losses "
          + ("all equal" if first is None and len(a) == len(b) else
             f"differ first at iteration {first}: {a[first]!r} vs {b[first]!r}"))
    print(f"first losses: original {a[:3]}, ours {b[:3]}; last: {a[-1]!r} vs {b[-1]!r}")
    for part in ("encoder", "decoder"):
        x = torch.load(os.path.join(args.out, "original", f"{part}_epoch_1.pth"), weights_only=True)
        y = torch.load(os.path.join(args.out, "ours", f"{part}_epoch_1.pth"), weights_only=True)
        floats = [k for k in x if x[k].is_floating_point()]
        same = x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in floats)
        worst = max(float((x[k].double() - y[k].double()).abs().max()) for k in floats)
        # the original's synchronized BatchNorm never counts batches (its F.batch_norm
        # call skips the counter); PyTorch's BatchNorm, and this package's, count them.
        # With a numeric momentum the counter is bookkeeping that no computation reads.
        counters = [k for k in x if not x[k].is_floating_point() and not torch.equal(x[k], y[k])]
        print(f"final {part}: {len(floats)} parameters and running statistics "
              + ("bit-identical" if same else f"differ, max |diff| {worst:.3e}")
              + (f"; {len(counters)} num_batches_tracked counters differ (original "
                 f"{int(x[counters[0]])}, ours {int(y[counters[0]])})" if counters else ""))


if __name__ == "__main__":
    main()
