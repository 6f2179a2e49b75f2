"""Install with `pip install -e .` (add `[test]` for the test tools)."""

from setuptools import find_packages, setup

setup(
    name="qat_rewrite",
    version="0.1.0",
    description="Quantization-aware training rewrites for TensorFlow 1-style graphs on TF 2.x",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["qat_rewrite", "qat_rewrite.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow==2.21.0",
        "tf-keras==2.21.0",
        "numpy",
        "protobuf",
        "absl-py",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis", "matplotlib", "onnx==1.23.2", "onnxruntime==1.31.1",
                 "tf2onnx==1.17.0", "tensorflow-model-optimization==0.8.1", "tf-slim==1.1.0"],
        "report": ["matplotlib"],
        "bench": ["matplotlib", "tensorflow-model-optimization==0.8.1"],
        "onnx": ["onnx==1.23.2", "onnxruntime==1.31.1", "tf2onnx==1.17.0"],
    },
    entry_points={"console_scripts": ["qat_rewrite=qat_rewrite.cli:main"]},
)
