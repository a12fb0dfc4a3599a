"""Evaluate a checkpoint on DATASET.list_val on one device (GPU or CPU).

    python3 eval.py --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml --gpus 0
    python3 eval.py --cfg config/synthetic-demo.yaml --gpus cpu VAL.visualize True

The command lives in ``mit_semseg.commands.eval`` (also ``python -m mit_semseg eval``).
"""
from mit_semseg.commands.eval import main
from mit_semseg.runtime.process import exit_now

if __name__ == "__main__":
    exit_now(main())
