"""Train a scene-parsing model: ``python train.py --cfg FILE --gpus SPEC [KEY VALUE ...]``.

The command lives in ``mit_semseg.commands.train`` (also ``python -m mit_semseg train``);
the training code in ``mit_semseg.training``. See docs/training.md.
"""
import sys

from mit_semseg.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
