"""Evaluate with one process per GPU, as the original eval_multipro.py did (old-style client)."""
import argparse
import math
import os
from multiprocessing import Process, Queue

import torch

from client_common import (color, inference_module, multi_scale_predict, save_side_by_side,
                           weights_paths)
from mit_semseg.config import cfg
from mit_semseg.dataset import ValDataset
from mit_semseg.lib.nn import user_scattered_collate
from mit_semseg.lib.utils import as_numpy
from mit_semseg.utils import (AverageMeter, accuracy, intersectionAndUnion, parse_devices,
                              setup_logger)


def part_worker(cfg, gpu, start, end, results):
    torch.cuda.set_device(gpu)
    dataset = ValDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_val, cfg.DATASET,
                         start_idx=start, end_idx=end)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.VAL.batch_size, shuffle=False,
                                         collate_fn=user_scattered_collate, num_workers=1)
    module = inference_module(cfg)
    for batch in loader:
        batch = batch[0]
        label = as_numpy(batch['seg_label'][0])
        pred = multi_scale_predict(module, batch, cfg.DATASET.num_class, label.shape[:2], gpu)
        acc, pix = accuracy(pred, label)
        inter, union = intersectionAndUnion(pred, label, cfg.DATASET.num_class)
        results.put_nowait((acc, pix, inter, union))
        if cfg.VAL.visualize:
            save_side_by_side((batch['img_ori'], color(label), color(pred)),
                              os.path.join(cfg.DIR, 'result'), batch['info'])


def run(gpus):
    with open(cfg.DATASET.list_val) as fh:
        total = len(fh.readlines())
    per_gpu = math.ceil(total / len(gpus))
    results = Queue(500)
    procs = []
    for k, gpu in enumerate(gpus):
        start, end = k * per_gpu, min((k + 1) * per_gpu, total)
        print('gpu:{}, start_idx:{}, end_idx:{}'.format(gpu, start, end))
        proc = Process(target=part_worker, args=(cfg, gpu, start, end, results))
        proc.start()
        procs.append(proc)
    acc_meter, inter_meter, union_meter = AverageMeter(), AverageMeter(), AverageMeter()
    for _ in range(total):
        acc, pix, inter, union = results.get(timeout=300)
        acc_meter.update(acc, pix)
        inter_meter.update(inter)
        union_meter.update(union)
    for proc in procs:
        proc.join()
    iou = inter_meter.sum / (union_meter.sum + 1e-10)
    for k, value in enumerate(iou):
        print('class [{}], IoU: {:.4f}'.format(k, value))
    print('[Eval Summary]:')
    print('Mean IoU: {:.4f}, Accuracy: {:.2f}%'.format(iou.mean(), acc_meter.average() * 100))
    print('Evaluation Done!')


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg', required=True)
    parser.add_argument('--gpus', default='0-3')
    parser.add_argument('opts', default=None, nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cfg.merge_from_file(args.cfg)
    cfg.merge_from_list(args.opts)
    setup_logger(distributed_rank=0).info('config file %s', args.cfg)
    weights_paths(cfg, cfg.VAL.checkpoint)
    run([int(d.replace('gpu', '')) for d in parse_devices(args.gpus)])
