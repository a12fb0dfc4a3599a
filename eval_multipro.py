"""Evaluate a checkpoint with one process per GPU (or several CPU processes); the
numbers equal eval.py's.

    python3 eval_multipro.py --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml --gpus 0-3
    python3 eval_multipro.py --cfg config/synthetic-demo.yaml --gpus cpu --workers 2

The command lives in ``mit_semseg.commands.eval_multipro``.
"""
from mit_semseg.commands.eval_multipro import main
from mit_semseg.runtime.process import exit_now

if __name__ == "__main__":
    exit_now(main())
