"""A local MobileNetV2 weights file for fine-tuning, generated here: weights are never downloaded.

    python -m demo.pretrained OUT.weights.h5 [--alpha 0.35] [--size 32]

It writes the weights of the feature extractor the edge builds for ``architecture:
mobilenet_v2`` (Keras' MobileNetV2 without its top, named ``base``), in Keras'
``.weights.h5`` format, which a training task names with ``pretrained: {source: file,
path: ...}``. The demo has no ImageNet weights, so these are freshly initialised: they
stand in for a plant's own pretrained base, and let the scenario exercise the whole
fine-tuning path (head first, then the top layers unfrozen) on a line's edge.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def weights_name(alpha: float, size: int) -> str:
    return f"mobilenet_v2_a{alpha:g}_{size}_base.weights.h5"


def pretrained_command(out: Path, alpha: float, size: int) -> list[str]:
    """The command line that writes the file (TensorFlow loads in its own process)."""
    return [sys.executable, "-m", "demo.pretrained", str(out), "--alpha", f"{alpha:g}", "--size", str(size)]


def generate(out: Path, alpha: float, size: int, seed: int = 7) -> Path:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from edge_node.architectures import build_base
    from fabbus.training_config import TrainingConfig

    keras.utils.set_random_seed(seed)
    config = TrainingConfig(classes=["good", "defect"], architecture="mobilenet_v2", alpha=alpha, input_size=size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.weights.h5")
    build_base(config).save_weights(tmp)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.pretrained", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--alpha", type=float, default=0.35)
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args(argv)
    print(generate(args.out, args.alpha, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
