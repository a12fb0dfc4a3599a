"""Segment photos: a file, a folder (searched recursively) or an odgt list.

    python3 test.py --imgs photo.jpg --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml \
        DIR ckpt/ade20k-resnet50dilated-ppm_deepsup TEST.result ./
Writes image | prediction PNGs to TEST.result and prints the classes found.
Unreadable images are reported and skipped; the exit code stays 0.
The command lives in ``mit_semseg.commands.test`` (also ``python -m mit_semseg test``).
"""
from mit_semseg.commands.test import main
from mit_semseg.runtime.process import exit_now

if __name__ == "__main__":
    exit_now(main())
