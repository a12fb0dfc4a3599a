"""Run the old-style clients against this package and against the original package; compare.

    python tests/compat/side_by_side.py ORIGINAL_PYTHON [WORK_DIR]

ORIGINAL_PYTHON is an interpreter that imports the original ``mit_semseg``
(mit-semseg==1.0.0), e.g. a venv made with::

    python -m venv --system-site-packages /tmp/orig_venv
    /tmp/orig_venv/bin/pip install --no-deps mit-semseg==1.0.0

(on Python >= 3.10 it also needs ``collections.Sequence``/``Mapping`` aliases
and, without torchvision, a ``torchvision.transforms.Normalize`` stand-in on
its path; neither belongs in this repository). This package is used from the
repository root through PYTHONPATH. Both runs get identical scenarios
(scenario.py) in separate folders; the script prints each client's outputs
side by side and exits 1 on any difference in printouts (timings and log
prefixes masked), written PNGs or saved tensors.
"""
from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, ROOT]
from scenario import make_scenario  # noqa: E402

CLIENTS = os.path.join(HERE, "clients")
_VOLATILE = [(re.compile(r"Inference Time: [\d.]+s"), "Inference Time: <t>s"),
             (re.compile(r"^\[\d{4}-.*$", re.M), "<log line>")]
# Printed by the original's ModelBuilder and datasets; this package logs them instead.
# (Child processes may print them into the middle of a parent's line.)
_ORIGINAL_CHATTER = re.compile(r"(Loading weights for net_(encoder|decoder)|# samples: \d+)\n?")
# A counter torch's BatchNorm keeps and the original's never advanced (no effect on results).
_COUNTERS = ("num_batches_tracked",)


def client_commands(folder: str) -> dict[str, list[str]]:
    """name -> client argv (run by run_client.py in ``folder``)."""
    cfg = os.path.join(folder, "scene.yaml")
    return {
        "test": ["client_test_script.py", "--imgs", "data/images/validation", "--cfg", cfg, "--gpu", "0"],
        "eval": ["client_eval.py", "--cfg", cfg, "--gpu", "0"],
        "eval_multipro": ["client_eval_multipro.py", "--cfg", cfg, "--gpus", "0-1"],
        "train": ["client_train.py", "--cfg", cfg, "--gpus", "0", "DATASET.imgSizes", "(48,)",
                  "DIR", os.path.join(folder, "train")],
        "notebook": ["client_notebook.py", "resnet18dilated", "512", "c1", "8", "ckpt",
                     "data/images/validation/scene_00001.jpg", "notebook_out"],
    }


def run_client(python: str, folder: str, argv: list[str], ours: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    if ours:
        env["PYTHONPATH"] = ROOT
    script = os.path.join(CLIENTS, argv[0])
    return subprocess.run([python, os.path.join(CLIENTS, "run_client.py"), script, *argv[1:]],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def which_package(python: str, ours: bool) -> str:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if ours:
        env["PYTHONPATH"] = ROOT
    return subprocess.run([python, "-c", "import mit_semseg; print(mit_semseg.__file__)"],
                          cwd=CLIENTS, env=env, capture_output=True, text=True).stdout.strip()


def prepare(folder: str) -> None:
    make_scenario(folder)
    os.makedirs(os.path.join(folder, "train"), exist_ok=True)
    for part in ("encoder", "decoder"):
        src = os.path.join(folder, "ckpt", f"{part}_epoch_1.pth")
        with open(src, "rb") as fh, open(os.path.join(folder, "train", os.path.basename(src)), "wb") as out:
            out.write(fh.read())


def masked(text: str) -> str:
    for pattern, repl in _VOLATILE:
        text = pattern.sub(repl, text)
    return text


def output_files(folder: str) -> list[str]:
    skip = {"ckpt/encoder_epoch_1.pth", "ckpt/decoder_epoch_1.pth",
            "train/encoder_epoch_1.pth", "train/decoder_epoch_1.pth"}
    found = []
    for sub in ("test_out", "ckpt", "train", "notebook_out"):
        for d, _, names in os.walk(os.path.join(folder, sub)):
            found += [os.path.relpath(os.path.join(d, n), folder) for n in names]
    return sorted(f for f in found if f not in skip)


def same_file(a: str, b: str) -> bool:
    if a.endswith(".pth"):
        x, y = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
        if isinstance(x, dict) and all(torch.is_tensor(v) for v in x.values()):
            counters = [k for k in x if k.endswith(_COUNTERS) and not torch.equal(x[k], y.get(k))]
            if counters:
                print(f"          {os.path.basename(a)}: {len(counters)} BatchNorm "
                      f"num_batches_tracked counters differ (ours counts steps, the original "
                      f"never did); every other tensor compared bit for bit")
            return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x
                                                if k not in counters)
        return x == y
    if a.endswith(".yaml"):
        return True  # the effective config: the original's defaults differ (documented)
    return filecmp.cmp(a, b, shallow=False)


def main(original_python: str, work: str) -> int:
    ours_dir, orig_dir = os.path.join(work, "ours"), os.path.join(work, "original")
    for folder in (ours_dir, orig_dir):
        os.makedirs(folder, exist_ok=True)
        prepare(folder)
    print(f"this package: {which_package(sys.executable, True)}")
    print(f"original:     {which_package(original_python, False)}")
    differences = 0
    commands = {True: client_commands(ours_dir), False: client_commands(orig_dir)}
    for name in commands[True]:
        ours = run_client(sys.executable, ours_dir, commands[True][name], True)
        orig = run_client(original_python, orig_dir, commands[False][name], False)
        a = masked(ours.stdout.replace(ours_dir, "<dir>"))
        b = masked(orig.stdout.replace(orig_dir, "<dir>"))
        chatter = len(_ORIGINAL_CHATTER.findall(b))
        b = _ORIGINAL_CHATTER.sub("", b)
        a, b = ("\n".join(line for line in text.splitlines() if line.strip()) for text in (a, b))
        print(f"\n===== {name}: exit codes ours {ours.returncode}, original {orig.returncode} "
              f"(left out: {chatter} 'Loading weights'/'# samples' lines only the original prints)")
        width = max((len(line) for line in a.splitlines()), default=0)
        la, lb = a.splitlines(), b.splitlines()
        for i in range(max(len(la), len(lb))):
            x = la[i] if i < len(la) else ""
            y = lb[i] if i < len(lb) else ""
            print(f"{'  ' if x == y else '! '}{x:<{width}} | {y}")
        if ours.returncode or orig.returncode:
            print("stderr ours:", ours.stderr[-1500:], "\nstderr original:", orig.stderr[-1500:])
            differences += 1
        differences += a != b
    files_a, files_b = output_files(ours_dir), output_files(orig_dir)
    print(f"\n===== files: ours {len(files_a)}, original {len(files_b)}")
    if files_a != files_b:
        print("file lists differ:", sorted(set(files_a) ^ set(files_b)))
        differences += 1
    for rel in sorted(set(files_a) & set(files_b)):
        same = same_file(os.path.join(ours_dir, rel), os.path.join(orig_dir, rel))
        print(f"{'same' if same else 'DIFFERENT':9} {rel}")
        differences += not same
    print(f"\n{differences} difference(s)")
    return 1 if differences else 0


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else "/tmp/compat_side_by_side"))
