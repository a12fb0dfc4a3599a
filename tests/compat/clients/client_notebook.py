"""The cells of the original notebooks/DemoSegmenter.ipynb as a script (old-style client).

    python client_notebook.py ARCH_ENC FC_DIM ARCH_DEC NUM_CLASS CKPT_DIR IMAGE OUT_DIR

torchvision is not needed: the image is normalised with numpy, as its
ToTensor + Normalize would do. Pictures are saved instead of displayed.
"""
import csv
import os
import sys

import numpy
import PIL.Image
import scipy.io
import torch

from mit_semseg.models import ModelBuilder, SegmentationModule
from mit_semseg.utils import colorEncode

colors = scipy.io.loadmat('data/color150.mat')['colors']
names = {}
with open('data/object150_info.csv') as f:
    reader = csv.reader(f)
    next(reader)
    for row in reader:
        names[int(row[0])] = row[5].split(';')[0]


def show(img, pred, out_path, index=None):
    if index is not None:
        pred = pred.copy()
        pred[pred != index] = -1
        print(f'{names[index + 1]}:')
    pred_color = colorEncode(pred, colors).astype(numpy.uint8)
    PIL.Image.fromarray(numpy.concatenate((img, pred_color), axis=1)).save(out_path)


arch_enc, fc_dim, arch_dec, num_class, ckpt, image, out = sys.argv[1:8]
net_encoder = ModelBuilder.build_encoder(arch=arch_enc, fc_dim=int(fc_dim),
                                         weights=os.path.join(ckpt, 'encoder_epoch_1.pth'))
net_decoder = ModelBuilder.build_decoder(arch=arch_dec, fc_dim=int(fc_dim),
                                         num_class=int(num_class),
                                         weights=os.path.join(ckpt, 'decoder_epoch_1.pth'),
                                         use_softmax=True)
segmentation_module = SegmentationModule(net_encoder, net_decoder,
                                         torch.nn.NLLLoss(ignore_index=-1))
segmentation_module.eval()
segmentation_module.cuda()

pil_image = PIL.Image.open(image).convert('RGB')
img_original = numpy.array(pil_image)
mean = numpy.array([0.485, 0.456, 0.406], numpy.float32)
std = numpy.array([0.229, 0.224, 0.225], numpy.float32)
img_data = torch.from_numpy(((img_original / numpy.float32(255) - mean) / std)
                            .astype(numpy.float32).transpose(2, 0, 1).copy())
singleton_batch = {'img_data': img_data[None].cuda()}
output_size = img_data.shape[1:]

with torch.no_grad():
    scores = segmentation_module(singleton_batch, segSize=output_size)
_, pred = torch.max(scores, dim=1)
pred = pred.cpu()[0].numpy()
os.makedirs(out, exist_ok=True)
show(img_original, pred, os.path.join(out, 'all.png'))
for c in numpy.bincount(pred.flatten()).argsort()[::-1][:15]:
    show(img_original, pred, os.path.join(out, f'class_{c}.png'), c)
