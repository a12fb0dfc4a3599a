import os

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))

with open(os.path.join(HERE, "README.md"), encoding="utf-8") as fh:
    long_description = fh.read()

WEB = ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9"]
ONNX = ["onnx>=1.17", "onnxruntime>=1.19"]
HUB = ["safetensors>=0.4", "huggingface_hub>=0.20"]
COCO = ["pycocotools>=2.0.6"]
POLYGONS = ["opencv-python-headless>=4.5"]
# timm imports torchvision, and each torchvision build pins one torch release: install
# torch and its matching torchvision from your channel first, then this extra, so that
# pip finds them satisfied and leaves your torch alone (docs/modern-models.md).
TIMM = ["timm>=1.0.15"]

setuptools.setup(
    name="mit_semseg",
    version="2.0.0",
    author="mit_semseg developers",
    description="Semantic segmentation / scene parsing on ADE20K (PyTorch): a faithful, "
                "modern re-implementation of MIT CSAIL's toolkit",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.9",
    packages=setuptools.find_packages(include=["mit_semseg", "mit_semseg.*"])
    + ["mit_semseg.data.ade20k"],
    # The ADE20K colour and name tables live in ./data and ship inside the package
    # as mit_semseg/data/ade20k/.
    package_dir={"mit_semseg.data.ade20k": "data"},
    package_data={"mit_semseg.data.ade20k": ["color150.mat", "color150.csv", "object150_info.csv"],
                  "mit_semseg.web": ["static/*.html", "static/*.js", "static/*.css"],
                  "mit_semseg.evaluation": ["static/*.html", "static/*.js", "static/*.css"],
                  "mit_semseg.checkpoints": ["released_sha256.json"]},
    install_requires=["torch>=2.1", "numpy", "scipy", "pillow", "yacs", "tqdm"],
    extras_require={
        # python -m mit_semseg web: the browser demo and its JSON API
        "web": WEB,
        # curves: python -m mit_semseg curves DIR
        "plot": ["matplotlib>=3.5"],
        # TRAIN.tensorboard True
        "tensorboard": ["tensorboard>=2.10"],
        # ONNX export (python -m mit_semseg export) and the onnxruntime backend;
        # lowest versions tested: onnx 1.17.0, onnxruntime 1.19.0 (numpy 2).
        "onnx": ONNX,
        # .safetensors weights and Hugging Face Hub folders / repo ids
        "hub": HUB,
        # COCO JSON in and out (RLE, polygons): the annotation importers and prelabel
        "coco": COCO,
        # LabelMe polygons out of label maps (contour tracing, Douglas-Peucker): prelabel
        "polygons": POLYGONS,
        # MODEL.arch_encoder timm:<name>: any timm backbone as an encoder (ConvNeXt, Swin
        # ... presets); tested with timm 1.0.15, 1.0.20, 1.0.29 and 1.0.31. Not in [test]:
        # it would bring a torch of its own (.ci/run tests it in a second environment)
        "timm": TIMM,
        # every annotation format (datatools import, prelabel)
        "annotations": COCO + POLYGONS,
        # the web tests drive FastAPI's TestClient (httpx) and headless Chromium (selenium)
        "test": ["pytest", *WEB, "httpx>=0.27", "selenium>=4.11", "matplotlib>=3.5",
                 "tensorboard>=2.10", *ONNX, *HUB, *COCO, *POLYGONS],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: OS Independent",
    ],
)
