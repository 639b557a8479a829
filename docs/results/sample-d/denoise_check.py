"""Does the denoiser learn at all? DeP (sample-d settings: 64 px, decoder [128, 64, 32, 16, 16], σ 0.22,
Adam 1e-3, batch 32) on 256 images of sample-d's pretraining pack, on ResNet-18 (whose UNet skips start at
stride 2) and on ViNy (whose skips all come from 16-px patch tokens). Run from the repository root after
`make sample-d`: python docs/results/sample-d/denoise_check.py > docs/results/sample-d/denoise_check.txt"""
import time

import h5py
import torch

from sslseg.data.augment import augment
from sslseg.objectives import build_objective

torch.set_num_threads(1)
torch.manual_seed(0)
with h5py.File("results/sample-d/data/pretrain-random.h5") as f:
    images = torch.as_tensor(f["images"][:256])
x, _ = augment(images, None, 64, None)  # resized and normalised as the workflow does
print(x.shape, float(x.mean()), float(x.std()))
for backbone in ("resnet18", "viny"):
    model = {"backbone": backbone, "image_size": 64, "patch_size": 16,
             "decoder_channels": [128, 64, 32, 16, 16], "decoder_width": 1}
    dep = build_objective("dep", {"model": model, "sigma": 0.22, "gamma_range": []})
    opt = torch.optim.Adam(dep.parameters(), 1e-3)
    gen, t0 = torch.Generator().manual_seed(0), time.time()
    for step in range(120):
        loss, _ = dep({"images": x[torch.randint(0, 256, (32,), generator=gen)]}, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 30 == 29:  # loss 1.0 is the zero predictor: E[eps^2] = 1
            print(backbone, step + 1, round(float(loss.detach()), 4), round(time.time() - t0, 1), flush=True)
