"""Write worker/engine/data/digits.pt from scikit-learn's digits (run once; the file is committed).

Shipping the 8x8 values as a tensor file keeps scikit-learn out of the engine's dependencies.
"""

from pathlib import Path

import torch
from sklearn.datasets import load_digits


def main() -> None:
    d = load_digits()
    out = Path(__file__).resolve().parents[1] / "worker" / "engine" / "data" / "digits.pt"
    torch.save({"images": torch.tensor(d.images, dtype=torch.uint8),  # values 0..16
                "labels": torch.tensor(d.target, dtype=torch.int64)}, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
