"""How much of the fidelity cell's gap a 200-pet test draw explains: a bootstrap over the test
pets of each fidelity checkpoint (the test set resampled with replacement, one confusion matrix
per resample, as the workflow scores it), and the breeds of the sample against the full dataset.

    python docs/results/fidelity/test_draw_noise.py results/fidelity > docs/results/fidelity/test_draw_noise.txt
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from sslseg.config import eval_settings, load_config
from sslseg.data.pack import read_pack
from sslseg.data.splits import read_rows
from sslseg.metrics import confusion, scores
from sslseg.models.predict import load_for_eval, predict_classes

ROOT = Path(__file__).resolve().parents[3]
B = 2000  # resamples


def per_image_confusions(ckpt: Path, pets: Path, rows: np.ndarray, settings: dict) -> np.ndarray:
    model, settings = load_for_eval(str(ckpt), settings)
    arrays = read_pack(pets, np.sort(rows))
    pred = predict_classes(model, arrays["images"], settings)
    masks = torch.as_tensor(arrays["masks"]).long()
    return np.stack([confusion(p, m, 3).numpy() for p, m in zip(pred, masks)])


def main(results: str) -> None:
    res = Path(results)
    cfg = load_config(ROOT / "config.yaml", ROOT / "workflow/configs/fidelity.yaml")
    settings = eval_settings(cfg, "viny")
    test = read_rows(res / "splits" / "test.txt")
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(test), (B, len(test)))
    print(f"bootstrap over the {len(test)} test pets, {B} resamples (seed 0); mIoU and accuracy in %")
    sds = []
    for ckpt in sorted(res.glob("runs/viny/scratch-i0/finetune-full-n250-s*/model.pt")):
        conf = per_image_confusions(ckpt, res / "data" / "pets.h5", test, settings)
        whole = scores(torch.as_tensor(conf.sum(0)))
        boot = [scores(torch.as_tensor(conf[d].sum(0))) for d in draws]
        miou = np.array([b["miou"] for b in boot]) * 100
        acc = np.array([b["pixel_acc"] for b in boot]) * 100
        sds.append((miou.std(ddof=1), acc.std(ddof=1)))
        print(f"{ckpt.parent.name}: mIoU {whole['miou'] * 100:.2f} (bootstrap sd {sds[-1][0]:.2f}), "
              f"accuracy {whole['pixel_acc'] * 100:.2f} (sd {sds[-1][1]:.2f})")
    m, a = np.mean(sds, axis=0)
    print(f"mean test-draw sd over the checkpoints: mIoU {m:.2f}, accuracy {a:.2f}")
    pets = Path(cfg["data"]["pets"]["root"]) if Path(cfg["data"]["pets"]["root"]).is_absolute() else ROOT / cfg["data"]["pets"]["root"]
    names = [p.stem.rsplit("_", 1)[0] for p in sorted((pets / "oxford-iiit-pet" / "images").glob("*.jpg"))]
    counts = Counter(names)
    top = counts.most_common(3)
    cats = sum(n for b, n in counts.items() if b[0].isupper())  # the dataset's convention: cat breeds are capitalised
    print(f"sample: {len(names)} pets of {len(counts)} breeds; the three largest {', '.join(f'{b} {n}' for b, n in top)} "
          f"({sum(n for _, n in top) / len(names):.0%} of all); cats {cats / len(names):.0%}. "
          "The full dataset: 7,349 pets, 37 breeds of ~200, cats 2,371 (32 %).")


if __name__ == "__main__":
    main(sys.argv[1])
