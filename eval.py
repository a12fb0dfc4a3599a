"""Evaluate a checkpoint on DATASET.list_val on one device (GPU or CPU).

    python3 eval.py --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml --gpu 0
    python3 eval.py --cfg config/synthetic-demo.yaml --gpu cpu VAL.visualize True
"""
import argparse

from mit_semseg.evaluate import eval_main
from mit_semseg.utils import exit_now


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate DIR/encoder_<VAL.checkpoint> + DIR/decoder_<VAL.checkpoint> "
                    "on DATASET.list_val with multi-scale inference (DATASET.imgSizes): "
                    "per-class IoU, mean IoU and pixel accuracy, also written to "
                    "DIR/eval_<checkpoint>.json.",
        epilog="example: python eval.py --gpu cpu --cfg config/synthetic-demo.yaml")
    parser.add_argument("--cfg", default="config/ade20k-resnet50dilated-ppm_deepsup.yaml",
                        metavar="FILE", help="path to config file")
    parser.add_argument("--gpu", default="auto",
                        help="GPU id, or 'cpu' (default: GPU 0 if available, else CPU)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. VAL.checkpoint epoch_10.pth")
    args = parser.parse_args(argv)
    return eval_main(args.cfg, args.opts, args.gpu)


if __name__ == "__main__":
    exit_now(main())
