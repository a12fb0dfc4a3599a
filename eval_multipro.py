"""Evaluate a checkpoint with one process per GPU (or several CPU processes);
the numbers equal eval.py's exactly.

    python3 eval_multipro.py --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml --gpus 0-3
    python3 eval_multipro.py --cfg config/synthetic-demo.yaml --gpus cpu --workers 2
"""
import argparse

from mit_semseg.evaluate import eval_multipro_main
from mit_semseg.utils import exit_now


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="eval.py with the validation list split over several processes "
                    "(one per GPU, or --workers CPU processes); the merged numbers equal "
                    "eval.py's.",
        epilog="examples: python eval_multipro.py --gpus 0-3 --cfg CFG\n"
               "          python eval_multipro.py --gpus cpu --workers 2 --cfg CFG",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default="config/ade20k-resnet50dilated-ppm_deepsup.yaml",
                        metavar="FILE", help="path to config file")
    parser.add_argument("--gpus", default=None,
                        help="GPUs to use, e.g. 0-3 or 0,2, or 'cpu' "
                             "(default: 0-3 capped to the visible GPUs, else cpu)")
    parser.add_argument("--workers", type=int, default=2,
                        help="number of CPU processes with --gpus cpu (default: 2)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs")
    args = parser.parse_args(argv)
    gpus = args.gpus
    if gpus is None:
        import torch
        count = min(4, torch.cuda.device_count())
        gpus = f"0-{count - 1}" if count else "cpu"
    return eval_multipro_main(args.cfg, args.opts, gpus, args.workers)


if __name__ == "__main__":
    exit_now(main())
