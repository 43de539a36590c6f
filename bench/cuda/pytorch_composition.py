#!/usr/bin/env python3
"""The PyTorch peer on the GPU: bench/pytorch_composition.py --device cuda (one script for both
devices; see its docstring). Kept so that the old command still works:

    python3 bench/cuda/pytorch_composition.py [more options of bench/pytorch_composition.py]
"""
import importlib.util
import os
import sys

_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pytorch_composition.py")
_spec = importlib.util.spec_from_file_location("diffattn_pytorch_composition", _path)
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)

if __name__ == "__main__":
    sys.exit(_mod.main(["--device", "cuda"] + sys.argv[1:]))
