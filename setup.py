from setuptools import find_packages, setup

# The repository's examples/ folder ships inside the package as monitor/examples, so that
# `monitor demo` finds train_sequential.py after `pip install .` or from a wheel; in the
# repository the examples stay a top-level folder of scripts (`python examples/NAME.py`).
setup(
    packages=find_packages(include=["monitor*"]) + ["monitor.examples"],
    package_dir={"monitor.examples": "examples"},
)
