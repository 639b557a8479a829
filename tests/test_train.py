"""The one training loop: resume after an interruption, non-finite loss, atomic checkpoints."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from sslseg import stages
from sslseg.io import UserError
from sslseg.models.checkpoint import read_checkpoint

MODEL = dict(preset="viny", image_size=32, patch_size=16)


def _settings(**over):
    s = dict(stage="finetune", model=MODEL, device="cpu", epochs=3, batch_size=4, lr=1e-3, weight_decay=1e-4,
             milestones=[2], gamma=0.5, dropout=0.1, seed=0, compile=False, amp="none", checkpoint_every=1,
             log_every=1, memory_gb=1, augment=dict(scale=[0.5, 1.0], ratio=[0.75, 1.33], flip=0.5, jitter=0.3))
    s.update(over)
    return s


@pytest.fixture
def pets(tmp_path):
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "pets.h5", "w") as f:
        f["images"] = rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
        f["masks"] = rng.integers(0, 3, (12, 32, 32), dtype=np.uint8)
    np.savetxt(tmp_path / "rows.txt", np.arange(12), fmt="%d")
    return tmp_path


def test_interrupted_run_resumes_to_the_same_weights(pets, monkeypatch):
    stages.finetune(str(pets / "pets.h5"), str(pets / "rows.txt"), None, str(pets / "full.pt"),
                    str(pets / "full.csv"), _settings())
    # Same run killed after epoch 2's checkpoint: the loop raises inside epoch 3.
    import sslseg.train as train

    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 2 * 3:  # 3 steps per epoch; die in the 3rd epoch
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    out = pets / "resumed.pt"
    with pytest.raises(KeyboardInterrupt):
        stages.finetune(str(pets / "pets.h5"), str(pets / "rows.txt"), None, str(out), str(pets / "r.csv"), _settings())
    assert not out.exists()  # nothing half-written for Snakemake to trust
    resume = out.with_name(f".{out.name}.resume")
    assert resume.exists()
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    stages.finetune(str(pets / "pets.h5"), str(pets / "rows.txt"), None, str(out), str(pets / "r.csv"), _settings())
    assert not resume.exists()
    a, b = read_checkpoint(pets / "full.pt")["model"], read_checkpoint(out)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (pets / "r.csv").read_text().count("\n") == 4  # header + 3 epochs, none repeated
    assert train.fingerprint(_settings()) != train.fingerprint(_settings(lr=2e-3))


def test_resume_state_from_other_settings_is_ignored(pets, capsys):
    out = pets / "m.pt"
    stages.finetune(str(pets / "pets.h5"), str(pets / "rows.txt"), None, str(out), str(pets / "a.csv"),
                    _settings(epochs=1))
    # Plant a resume file written with other settings: it must not be used.
    from sslseg.io import save_torch

    save_torch(out.with_name(f".{out.name}.resume"), {"fingerprint": "other", "epoch": 1})
    stages.finetune(str(pets / "pets.h5"), str(pets / "rows.txt"), None, str(out), str(pets / "a.csv"),
                    _settings(epochs=1))
    assert "written with other settings" in capsys.readouterr().out


def test_non_finite_loss_stops_with_the_key_to_change(pets):
    with pytest.raises(UserError, match=r"non-finite loss .* lower finetune.lr"):
        stages.finetune(str(pets / "pets.h5"), str(pets / "rows.txt"), None, str(pets / "m.pt"),
                        str(pets / "m.csv"), _settings(lr=1e6, epochs=3, dropout=0.0))
    assert not (pets / "m.pt").exists()


def test_batch_larger_than_the_subset_is_a_clear_error(pets):
    with pytest.raises(UserError, match="finetune.batch_size: 64 is larger than the 12 training images"):
        stages.finetune(str(pets / "pets.h5"), str(pets / "rows.txt"), None, str(pets / "m.pt"),
                        str(pets / "m.csv"), _settings(batch_size=64))


def test_cuda_batch_multiplier_scales_batch_and_lr_only_on_cuda():
    s = _settings(batch_size=64, lr=1e-3, cuda_batch_multiplier=8, lr_scaling="linear")
    assert stages.scale_for_device(s, torch.device("cpu")) == s
    cuda = stages.scale_for_device(s, torch.device("cuda"))
    assert cuda["batch_size"] == 512 and cuda["lr"] == pytest.approx(8e-3)
    assert stages.scale_for_device({**s, "lr_scaling": "sqrt"}, torch.device("cuda"))["lr"] == pytest.approx(1e-3 * 8**0.5)
