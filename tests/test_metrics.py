"""Metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from sslseg.metrics import confusion, scores


def test_confusion_counts_truth_rows_and_prediction_columns():
    truth = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    conf = confusion(pred, truth, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_scores_match_hand_computation():
    # truth:  pet pet bg bg border border   pred: pet bg bg bg border pet
    conf = confusion(torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    s = scores(conf)
    assert s["pixel_acc"] == pytest.approx(4 / 6)
    # pet: TP 1, FP 1 (border→pet), FN 1 (pet→bg): 1/3; bg: TP 2, FP 1: 2/3; border: TP 1, FN 1: 1/2
    assert s["iou"] == pytest.approx({"pet": 1 / 3, "background": 2 / 3, "border": 1 / 2})
    assert s["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    # foreground = pet ∪ border: truth fg {0,1,4,5}, pred fg {0,4,5}: TP 3, union 4
    assert s["fg_iou"] == pytest.approx(3 / 4)


def test_accumulating_batches_equals_scoring_all_at_once():
    g = torch.Generator().manual_seed(0)
    truth, pred = torch.randint(0, 3, (4, 8, 8), generator=g), torch.randint(0, 3, (4, 8, 8), generator=g)
    total = confusion(pred[:2], truth[:2], 3) + confusion(pred[2:], truth[2:], 3)
    assert torch.equal(total, confusion(pred, truth, 3))


def test_absent_class_is_left_out_of_the_mean_and_ignored_pixels_do_not_count():
    truth = torch.tensor([0, 0, 1, 255])
    pred = torch.tensor([0, 0, 1, 2])
    s = scores(confusion(pred, truth, 3))
    assert math.isnan(s["iou"]["border"])
    assert s["miou"] == 1.0 and s["pixels"] == 3
