"""MAE: per-sample masking, an encoder that sees only visible patches, the masked-patch MSE,
encoder cost, every ViT preset, and the hand-over of its encoder to the segmentation fine-tune."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sslseg.io import UserError
from sslseg.models.checkpoint import load_backbone, save_checkpoint
from sslseg.models.vit import patchify
from sslseg.objectives import build_objective
from sslseg.objectives.mae import DECODERS, MAE, decoder_settings, mae_loss, masking_of, random_masking, sincos_2d

VINY32 = dict(backbone="viny", image_size=32, patch_size=16)  # 4 patches
VINY64 = dict(backbone="viny", image_size=64, patch_size=16)  # 16 patches
TINY_DECODER = dict(dim=32, depth=1, heads=4, mlp_ratio=2.0)


def mae(model: dict = VINY64, ratio: float = 0.75, norm_pix: bool = True) -> MAE:
    torch.manual_seed(0)
    return MAE(model, ratio, TINY_DECODER, norm_pix).eval()


def first_block_input(model: MAE, batch: dict, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    seen = []
    handle = model.backbone.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        _, out = model(batch, gen)
    handle.remove()
    return seen[0], out


def test_random_masking_is_maes_per_sample_shuffle_and_reproducible():
    mask, ids_restore = random_masking(torch.rand(8, 16, generator=torch.Generator().manual_seed(0)), 0.75)
    assert mask.dtype == torch.bool and (mask.sum(1) == 12).all()  # keep round(0.25 * 16) = 4
    assert len({tuple(m.tolist()) for m in mask}) > 1  # positions differ per sample
    # models_mae.py random_masking on the same noise: keep the 4 smallest, unshuffle a 0/1 mask
    noise = torch.rand(8, 16, generator=torch.Generator().manual_seed(0))
    ids_shuffle = noise.argsort(1)
    ref = torch.ones(8, 16)
    ref[:, :4] = 0
    assert torch.equal(mask, torch.gather(ref, 1, ids_shuffle.argsort(1)).bool())
    assert torch.equal(ids_restore, ids_shuffle.argsort(1))
    again, _ = random_masking(torch.rand(8, 16, generator=torch.Generator().manual_seed(0)), 0.75)
    assert torch.equal(mask, again)
    assert (random_masking(torch.rand(1, 10), 0.9)[0].sum() == 9).all()  # int() would keep 0


def test_a_given_mask_overrides_the_draw_and_must_be_even():
    model = mae()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 4:] = True
    mask[1, :12] = True
    _, out = model({"images": torch.randn(2, 3, 64, 64), "mask": mask}, torch.Generator().manual_seed(0))
    assert torch.equal(out["mask"], mask)
    ids_restore, keep = masking_of(mask)
    assert keep == 4 and torch.equal(ids_restore.argsort(1)[1, :4], torch.arange(12, 16))
    mask[1, 0] = False
    with pytest.raises(ValueError, match="as many patches in every sample"):
        masking_of(mask)


def test_encoder_blocks_see_only_the_visible_patches_and_the_class_token():
    model = mae()
    images = torch.randn(2, 3, 64, 64)
    tokens, out = first_block_input(model, {"images": images}, torch.Generator().manual_seed(1))
    assert tokens.shape == (2, 4 + 1, 128)  # len_keep + cls, not 16 + 1
    bb = model.backbone
    with torch.no_grad():
        every = bb.patch_embed(images) + bb.pos_embed[:, 1:]  # (B, 16, D): each patch at its position
        torch.testing.assert_close(tokens[:, 0], (bb.cls_token[0] + bb.pos_embed[:, 0]).expand(2, -1))
    for b in range(2):
        nearest = torch.cdist(tokens[b, 1:], every[b]).argmin(1)
        assert sorted(nearest.tolist()) == torch.nonzero(~out["mask"][b]).flatten().tolist()
        torch.testing.assert_close(tokens[b, 1:], every[b, nearest])
    # and nothing of a hidden patch reaches the encoder
    changed = images.clone()
    hidden = int(torch.nonzero(out["mask"][0])[0])
    r, c = divmod(hidden, 4)
    changed[0, :, 16 * r:16 * r + 16, 16 * c:16 * c + 16] += 5
    tokens2, _ = first_block_input(model, {"images": changed}, torch.Generator().manual_seed(1))
    assert torch.equal(tokens, tokens2)


def test_all_patches_kept_is_the_plain_forward():
    """At ratio 0 the MAE encoder is the backbone's ordinary forward, which the fine-tune runs."""
    bb = mae().backbone
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        every = torch.arange(16).expand(2, -1)
        torch.testing.assert_close(bb.forward_visible(images, every), bb.forward_tokens(images))


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_is_the_mse_over_masked_patches_only(norm_pix):
    torch.manual_seed(0)
    images, pred = torch.randn(2, 3, 32, 32), torch.randn(2, 4, 16 * 16 * 3)
    mask = torch.tensor([[True, False, True, True], [False, True, False, False]])
    target = patchify(images, 16)
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(-1)
    loss = mae_loss(images, pred, mask, 16, norm_pix)
    torch.testing.assert_close(loss, per_patch[mask].mean())
    visible = pred.clone()
    visible[~mask] += 3.0
    assert torch.equal(mae_loss(images, visible, mask, 16, norm_pix), loss)
    hidden = pred.clone()
    hidden[mask] += 3.0
    assert mae_loss(images, hidden, mask, 16, norm_pix) > loss


@pytest.mark.parametrize("norm_pix", [True, False])
def test_outputs_are_pixels_the_loss_can_be_recomputed_from(norm_pix):
    """outputs["pred"] is in the image space (un-normalised per patch under norm_pix_loss, for the
    reconstruction figure); normalising it back gives the loss the model reported."""
    model = mae(VINY32, 0.5, norm_pix)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        loss, out = model({"images": images}, torch.Generator().manual_seed(0))
    assert out["pred"].shape == images.shape and out["mask"].shape == (2, 4) and out["mask"].dtype == torch.bool
    pred = patchify(out["pred"], 16)
    if norm_pix:
        target = patchify(images, 16)
        pred = (pred - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(mae_loss(images, pred, out["mask"], 16, norm_pix), loss)


def test_encoder_flops_scale_with_the_visible_fraction():
    bb = mae().backbone
    images = torch.randn(1, 3, 64, 64)

    def flops(keep: int) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            bb.forward_visible(images, torch.arange(keep)[None])
        return counter.get_total_flops()

    ratio = flops(4) / flops(16)  # mask ratio 0.75 vs 0: 5 tokens vs 17
    assert 0.2 < ratio < 0.35


def test_decoder_is_the_papers_sin_cos_and_frozen():
    def reference(dim: int, n: int) -> np.ndarray:  # facebookresearch/mae util/pos_embed.py
        def one(d, pos):
            omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
            out = np.einsum("m,d->md", pos.reshape(-1), omega)
            return np.concatenate([np.sin(out), np.cos(out)], axis=1)
        grid = np.stack(np.meshgrid(np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64)))
        emb = np.concatenate([one(dim // 2, grid[0]), one(dim // 2, grid[1])], axis=1)
        return np.concatenate([np.zeros([1, dim]), emb])

    np.testing.assert_allclose(sincos_2d(16, 4, 4)[0].numpy(), reference(16, 4), atol=1e-6)
    model = mae()
    assert "decoder_pos_embed" not in dict(model.named_parameters())
    assert "decoder_pos_embed" not in model.state_dict()  # follows from the settings; not trained


def test_decoder_presets_overrides_and_one_line_errors():
    assert DECODERS["mae"] == dict(dim=512, depth=8, heads=16, mlp_ratio=4.0)  # the paper's, seed 003
    assert decoder_settings({"decoder": "small", "decoder_dim": 64, "decoder_depth": None}) == \
        dict(dim=64, depth=2, heads=4, mlp_ratio=4.0)
    model = build_objective("mae", dict(model=VINY32, mask_ratio=0.75, decoder="mae", norm_pix_loss=True))
    assert (model.decoder_embed.out_features, len(model.decoder_blocks)) == (512, 8)
    assert model.decoder_blocks[0].attn.num_heads == 16
    bad = [({"decoder": "huge"}, "^objectives.mae.decoder: unknown preset 'huge'; available: mae, small$"),
           ({"decoder": "small", "decoder_heads": 5}, "^objectives.mae.decoder_heads: 5 heads do not divide"),
           ({"decoder": "small", "decoder_dim": 126, "decoder_heads": 2}, "^objectives.mae.decoder_dim: 126")]
    for settings, message in bad:
        with pytest.raises(UserError, match=message) as e:
            decoder_settings(settings)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("backbone", ["viny", "vit_tiny", "vit_small", "vit_base"])
def test_every_vit_pretrains(backbone):
    model = mae(dict(backbone=backbone, image_size=32, patch_size=16))
    loss, out = model({"images": torch.randn(1, 3, 32, 32)}, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and out["pred"].shape == (1, 3, 32, 32) and out["mask"].sum() == 3


def test_a_resnet_is_refused_naming_the_grid_key():
    with pytest.raises(UserError, match="^grid.backbones: mae drops patches, which resnet18 cannot") as e:
        MAE(dict(backbone="resnet18", image_size=64, patch_size=16), 0.75, TINY_DECODER)
    assert "\n" not in str(e.value)


def test_the_encoder_carries_into_the_segmentation_fine_tune_unmasked(tmp_path):
    pre = mae()
    save_checkpoint(tmp_path / "mae.pt", pre, {})
    seg = build_objective("segment", {"model": VINY64, "classes": 3, "dropout": 0.0})
    dropped = load_backbone(seg, tmp_path / "mae.pt")
    assert "mask_token" in dropped and all(k.startswith(("decoder_", "mask_token")) for k in dropped)
    for k, v in seg.backbone.state_dict().items():
        assert torch.equal(v, pre.backbone.state_dict()[k])
    seen = []
    seg.backbone.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    logits = seg.predict(torch.randn(2, 3, 64, 64))
    assert seen == [(2, 16 + 1, 128)] and logits.shape == (2, 3, 64, 64)  # every patch: no masking


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    model = mae(VINY32, 0.5).train()
    batch = {"images": torch.randn(4, 3, 32, 32), "mask": torch.tensor([[True, False] * 2] * 4)}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
