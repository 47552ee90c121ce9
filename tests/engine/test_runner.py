import torch

from tests.tiny import random_samples, tiny_card
from worker.engine.runner import align_labels


def test_labels_follow_class_names_not_folder_order():
    samples = random_samples(6, num_classes=3)
    samples.class_names = ["cat", "dog", "eel"]  # alphabetical, as an image folder sorts them
    card = tiny_card(num_classes=3, class_names=["eel", "cat", "dog"])
    before = samples.labels.clone()
    assert align_labels(samples, card) == []
    assert samples.class_names == ["eel", "cat", "dog"]
    assert torch.equal(samples.labels, torch.tensor([1, 2, 0])[before])


def test_subset_of_classes_keeps_indices():
    samples = random_samples(4, num_classes=2)
    card = tiny_card(num_classes=3)
    before = samples.labels.clone()
    assert align_labels(samples, card) == []
    assert torch.equal(samples.labels, before)


def test_unmatched_names_warn():
    samples = random_samples(4, num_classes=2)
    samples.class_names = ["left", "right"]
    warnings = align_labels(samples, tiny_card(num_classes=2))
    assert [w["code"] for w in warnings] == ["class_names_differ"]
    assert samples.class_names == ["0", "1"]
