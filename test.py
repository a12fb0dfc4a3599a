"""Segment photos: a file, a folder (searched recursively) or an odgt list.

    python3 test.py --imgs photo.jpg --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml \
        DIR ckpt/ade20k-resnet50dilated-ppm_deepsup TEST.result ./
Writes image | prediction PNGs to TEST.result and prints the classes found.
Unreadable images are reported and skipped; the exit code stays 0.
"""
import argparse

from mit_semseg.evaluate import test_main
from mit_semseg.utils import exit_now


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Segment photos with DIR/encoder_<TEST.checkpoint> + "
                    "DIR/decoder_<TEST.checkpoint>: writes an image | prediction PNG per "
                    "input into TEST.result and prints the classes found; unreadable "
                    "files are reported and skipped.",
        epilog="example: python test.py --imgs photos/ --cfg config/synthetic-demo.yaml "
               "--gpu cpu TEST.result out/")
    parser.add_argument("--imgs", required=True,
                        help="an image, a folder of images (recursive), or an .odgt list")
    parser.add_argument("--cfg", default="config/ade20k-resnet50dilated-ppm_deepsup.yaml",
                        metavar="FILE", help="path to config file")
    parser.add_argument("--gpu", default="auto",
                        help="GPU id, or -1 / cpu for the CPU (default: GPU 0 if available)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs")
    args = parser.parse_args(argv)
    return test_main(args.imgs, args.cfg, args.opts, args.gpu)


if __name__ == "__main__":
    exit_now(main())
