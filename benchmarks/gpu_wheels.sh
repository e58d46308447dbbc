#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.py on a GPU machine without network, into .whl/ (git-ignored),
# with the CIFAR-10 archive: CPython 3.12, Linux x86-64. The machine's image is taken to hold
# JAX with CUDA, PyTorch with torchvision, numpy, pandas, pyarrow, scipy, pillow, fsspec, h5py,
# rich, absl-py, ml-dtypes, click, cloudpickle, msgpack, psutil, pyyaml, toolz, jinja2,
# packaging, nvidia-ml-py, cuda-core and numba (our H200 image does), but no Keras, Dask,
# distributed or dask-cuda: those travel. The README's "GPU check" gives the command there.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.whl
mkdir -p "$dest"
tags=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# dask-cuda 26.10 pins dask and distributed 2026.7.1 (through rapids-dask-dependency)
python3 -m pip download -q --no-deps "${tags[@]}" -d "$dest" \
    keras==3.15.1 namex optree simplejpeg \
    dask==2026.7.1 distributed==2026.7.1 dask-cuda==26.10.0 rapids-dask-dependency==26.10.0 \
    tornado tblib zict partd locket sortedcontainers
python3 -m pip wheel -q --no-deps -w "$dest" airbench==0.1.8  # published as source only
cp "${CIFAR10_ARCHIVE:-../shared/data/cifar10-jpeg.tar.gz}" "$dest/"
ls "$dest"
du -sh "$dest"
