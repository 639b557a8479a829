"""The one training loop: resume after an interruption, stale resume state, non-finite loss,
a batch larger than the set. `fit` on a toy objective (tests/test_engine.py), no stage."""

from __future__ import annotations

import pytest
import torch

import sslseg.train as train_module
from sslseg.io import UserError, save_torch

from test_engine import die_after, same_weights, settings_for, train


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    full, _ = train(tmp_path, settings_for(), tag="full")
    # The same run killed in epoch 3, after epoch 2's checkpoint (3 steps an epoch).
    die_after(monkeypatch, torch.optim.AdamW, 2 * 3)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, settings_for(), tag="cut")
    assert torch.load(tmp_path / "cut.resume", weights_only=False)["epoch"] == 2
    monkeypatch.undo()
    resumed, _ = train(tmp_path, settings_for(), tag="cut")
    assert same_weights(full, resumed)
    assert (tmp_path / "cut.csv").read_text().count("\n") == 4  # header + 3 epochs, none repeated
    assert train_module.fingerprint(settings_for()) != train_module.fingerprint(settings_for(lr=2e-3))


def test_resume_state_from_other_settings_is_ignored(tmp_path, capsys):
    # A resume file written with other settings must not be used.
    save_torch(tmp_path / "run.resume", {"fingerprint": "other", "epoch": 1})
    _, stats = train(tmp_path, settings_for(epochs=1))
    assert "written with other settings" in capsys.readouterr().out
    assert [row["epoch"] for row in stats["history"]] == [1]


def test_non_finite_loss_stops_with_the_key_to_change(tmp_path):
    with pytest.raises(UserError, match=r"non-finite loss .* lower finetune\.lr"):
        train(tmp_path, settings_for(lr=1e30, epochs=3))


def test_batch_larger_than_the_subset_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"finetune\.batch_size: 64 is larger than the 12 training images"):
        train(tmp_path, settings_for(batch_size=64))


def test_make_optimizer_is_still_importable_from_train():
    from sslseg.optim import make_optimizer

    assert train_module.make_optimizer is make_optimizer


def test_cuda_batch_multiplier_scales_batch_and_lr_only_on_cuda():
    from sslseg.optim import scale_for_device

    s = settings_for(batch_size=64, lr=1e-3, cuda_batch_multiplier=8, lr_scaling="linear")
    assert scale_for_device(s, torch.device("cpu")) == s
    cuda = scale_for_device(s, torch.device("cuda"))
    assert cuda["batch_size"] == 512 and cuda["lr"] == pytest.approx(8e-3)
    assert scale_for_device({**s, "lr_scaling": "sqrt"}, torch.device("cuda"))["lr"] == pytest.approx(1e-3 * 8**0.5)
