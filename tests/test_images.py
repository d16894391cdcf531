"""Images: a grid of the batch's first images, captioned."""
from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pytest
import torch

from monitor import Images, Scalars
from monitor.imaging import PAD, encode_grid
from monitor.records import ImageGrid as ImageRecord, Layout
from helpers.monitors import live_monitor, model_and_data, monitor_with, shown_grid


def test_images_log_a_copy_of_the_first_count_images_captioned_with_class_names():
    monitor, sink = monitor_with(Images(every=1, count=4, class_names=["zero", "one", "two"]))
    inputs, targets = torch.rand(16, 1, 8, 8), torch.tensor([0, 1, 2, 7] * 4)
    monitor.step_end(inputs=inputs, targets=targets)
    expected = inputs[:4].clone()
    inputs.fill_(0.0)  # the loop reuses its batch buffers
    targets.fill_(1)
    (record,) = sink.of(ImageRecord, "inputs")
    assert record.x == 1 and torch.equal(record.pixels, expected)
    assert list(record.captions) == ["zero", "one", "two", "7"]
    assert sink.of(Layout, "inputs")[0].opts == {"title": "inputs"}


def test_images_caption_predictions_or_both_targets_and_predictions():
    logits = torch.tensor([[0.1, 2.0], [3.0, 0.0], [0.0, 1.0]])
    for captions, expected in (("predictions", ["dog", "cat", "dog"]),
                               ("both", ["cat / dog", "cat / cat", "dog / dog"])):
        monitor, sink = monitor_with(Images(captions=captions, class_names={0: "cat", 1: "dog"}))
        monitor.step_end(inputs=torch.rand(3, 3, 4, 4), targets=[0, 0, 1], outputs=logits)
        assert list(sink.of(ImageRecord)[0].captions) == expected


@pytest.mark.parametrize("scores", ["logits", "probabilities"])
def test_a_binary_classifier_s_one_score_and_float_targets_are_captioned_by_class_name(scores):
    logits = torch.tensor([[-0.3], [0.2], [1.5], [-2.0]])  # BCEWithLogitsLoss's (N, 1)
    outputs = logits if scores == "logits" else torch.sigmoid(logits)
    monitor, sink = monitor_with(Images(captions="both", class_names=["cat", "dog"]))
    monitor.step_end(inputs=torch.rand(4, 3, 4, 4), targets=torch.tensor([0.0, 1.0, 1.0, 0.0]), outputs=outputs)
    assert list(sink.of(ImageRecord)[0].captions) == ["cat / cat", "dog / dog", "dog / dog", "cat / cat"]
    regression, sink = monitor_with(Images(captions="predictions"))  # no two class names: the value itself
    regression.step_end(inputs=torch.rand(2, 3, 4, 4), outputs=torch.tensor([[0.25], [3.5]]))
    assert list(sink.of(ImageRecord)[0].captions) == ["0.25", "3.5"]


@pytest.mark.parametrize("scores", ["logits", "probabilities"])
def test_a_multi_label_classifier_s_images_are_captioned_with_each_class_present(scores):
    # BCEWithLogitsLoss over K classes: targets (N, K) of 0 and 1; argmax made one class of each
    names = ["cat", "car", "tree"]
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, -2.0, 4.0], [-1.0, -1.0, -1.0]])
    outputs = logits if scores == "logits" else torch.sigmoid(logits)
    for captions, expected in (("targets", ["cat, car", "tree", "none"]),
                               ("both", ["cat, car / cat, tree", "tree / tree", "none / none"])):
        monitor, sink = monitor_with(Images(captions=captions, class_names=names))
        monitor.step_end(inputs=torch.rand(3, 3, 4, 4), targets=targets, outputs=outputs)
        assert list(sink.of(ImageRecord)[0].captions) == expected


def test_one_hot_targets_are_one_class_each_and_their_predictions_the_argmax():
    targets = torch.nn.functional.one_hot(torch.tensor([2, 0]), 3).float()  # CrossEntropyLoss takes them too
    monitor, sink = monitor_with(Images(captions="both", class_names=["cat", "car", "tree"]))
    monitor.step_end(inputs=torch.rand(2, 3, 4, 4), targets=targets, outputs=torch.tensor([[-2.0, -1.0, -0.5],
                                                                                           [0.1, 3.0, 2.0]]))
    assert list(sink.of(ImageRecord)[0].captions) == ["tree / tree", "cat / car"]


def test_targets_of_several_values_that_are_not_multi_hot_are_no_captions_and_predictions_stay_the_argmax():
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.3, 0.3, 0.4, 0.8]])  # a box per image, or soft labels
    monitor, sink = monitor_with(Images(captions="both"))
    monitor.step_end(inputs=torch.rand(2, 3, 4, 4), targets=boxes, outputs=torch.tensor([[0.0, 0.0, 0.0, 1.0],
                                                                                         [0.0, 2.0, 0.0, 1.0]]))
    assert list(sink.of(ImageRecord)[0].captions) == ["3", "1"]
    alone, sink = monitor_with(Images(captions="targets"))
    alone.step_end(inputs=torch.rand(2, 3, 4, 4), targets=boxes)
    assert list(sink.of(ImageRecord)[0].captions) == []  # read as none: the grid has no captions


def test_soft_targets_of_mixup_and_cutmix_are_captioned_with_their_classes_weights():
    # A MixUp batch's targets (N, C) of weights: captioned with the prediction alone, it read as the true label.
    soft = torch.tensor([[0.7, 0.0, 0.3], [0.0, 1.0, 0.0], [0.9333, 0.0333, 0.0334]])  # label smoothing, last
    monitor, sink = monitor_with(Images(captions="both", class_names=["fish", "cat", "dog"]))
    monitor.step_end(inputs=torch.rand(3, 3, 4, 4), targets=soft, outputs=torch.eye(3))
    assert list(sink.of(ImageRecord)[0].captions) == ["fish 0.7 + dog 0.3 / fish", "cat 1 / cat", "fish 0.93 / dog"]


@pytest.mark.parametrize("kind", ["dict", "dataclass"])
def test_predictions_asked_of_a_model_s_dict_are_said_once_to_be_missing(caplog, kind):
    monitor, sink = monitor_with(Images(every=1, captions="both", class_names=["cat", "dog"]))
    output = {"logits": torch.rand(2, 2)} if kind == "dict" else \
        dataclasses.make_dataclass("ModelOutput", ["logits"])(torch.rand(2, 2))  # Hugging Face's style
    with caplog.at_level(logging.WARNING, logger="monitor"):
        for _ in range(2):
            monitor.step_end(inputs=torch.rand(2, 3, 4, 4), targets=[0, 1], outputs=output)
    assert [list(r.captions) for r in sink.of(ImageRecord)] == [["cat", "dog"]] * 2  # the targets still
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "shows no predictions" in said[0] and f"got a {type(output).__name__}" in said[0]


@pytest.mark.parametrize("names, said", [(["cat", "dog", "car"], "classes 3 to 4 are captioned by number"),
                                         (list("abcdef"), "in the order of the scores")])
def test_class_names_not_one_a_class_of_the_scores_are_said_once(caplog, names, said):
    monitor, sink = monitor_with(Images(every=1, captions="both", class_names=names))
    with caplog.at_level(logging.WARNING, logger="monitor"):
        for _ in range(2):
            monitor.step_end(inputs=torch.rand(2, 3, 4, 4), targets=[0, 4],
                             outputs=torch.tensor([[9.0, 0, 0, 0, 0], [0, 0, 0, 0, 9.0]]))
    fifth = names[4] if len(names) > 4 else "4"
    assert list(sink.of(ImageRecord)[0].captions) == [f"{names[0]} / {names[0]}", f"{fifth} / {fifth}"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and f"has {len(names)} class_names but the outputs score 5 classes" in messages[0]
    assert said in messages[0]


def test_images_of_outputs_go_to_window_outputs_without_captions_when_none_fit():
    monitor, sink = monitor_with(Images(source="outputs", count=2))
    outputs = torch.randn(5, 3, 6, 6)
    monitor.step_end(outputs=outputs, targets=torch.zeros(5, 6, 6))  # masks: no label per image
    (record,) = sink.of(ImageRecord, "outputs")
    assert torch.equal(record.pixels, outputs[:2]) and record.captions is None
    monitor, sink = monitor_with(Images(count=2))
    boxes = [{"boxes": torch.rand(2, 4), "labels": torch.tensor([1, 2])} for _ in range(5)]
    monitor.step_end(inputs=outputs, targets=boxes)  # a detector's targets: no label per image
    assert sink.of(ImageRecord)[0].captions is None


@pytest.mark.parametrize("classes", [2, 21])
def test_a_segmentation_s_class_scores_show_each_pixel_s_class_in_its_colour(classes):
    from monitor.callbacks.images import class_colours
    monitor, sink = monitor_with(Images(source="outputs", count=2))
    classes_of = torch.randint(0, classes, (4, 6, 6))
    scores = torch.nn.functional.one_hot(classes_of, classes).permute(0, 3, 1, 2).float()
    logits = scores * 5 + torch.rand(4, classes, 6, 6)
    monitor.step_end(outputs=logits.requires_grad_())  # a model's output, still in its graph
    (record,) = sink.of(ImageRecord, "outputs")
    assert record.pixels.dtype == torch.uint8 and torch.equal(record.pixels, class_colours(classes_of[:2]))
    palette = class_colours(torch.arange(4096).reshape(1, 64, 64)).flatten(2)[0].T
    assert len({tuple(colour.tolist()) for colour in palette}) == 4096 and palette[0].sum() == 0  # 0: black


@pytest.mark.parametrize("channels", [3, 1])
def test_class_scores_beside_masks_as_targets_show_each_pixel_s_class_whatever_their_number(channels):
    # Three classes (background and two) would read as RGB, one as grey: the masks say which.
    from monitor.callbacks.images import class_colours
    monitor, sink = monitor_with(Images(source="outputs", count=2))
    masks = torch.randint(0, max(channels, 2), (4, 6, 6))
    if channels == 3:
        logits = torch.nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float() * 5
    else:
        logits = (masks[:, None].float() - 0.5) * 4  # BCEWithLogitsLoss's: above 0 is the class
    monitor.step_end(outputs=logits, targets=masks.bool() if channels == 1 else masks)
    (record,) = sink.of(ImageRecord, "outputs")
    assert torch.equal(record.pixels, class_colours(masks[:2])) and record.captions is None


@pytest.mark.parametrize("targets", ["masks", None])
def test_a_predicted_label_map_shows_each_pixel_s_class_in_its_colour(targets):
    # logits.argmax(1) as outputs beside masks: a logit above 0 was the class, so the rare class 2
    # (a lesion) was drawn as class 1; with no targets, grey stretched per image.
    from monitor.callbacks.images import class_colours
    monitor, sink = monitor_with(Images(source="outputs", count=2))
    predicted = torch.randint(0, 3, (4, 6, 6))
    monitor.step_end(outputs=predicted, targets=predicted.clone() if targets else None)
    (record,) = sink.of(ImageRecord, "outputs")
    assert torch.equal(record.pixels, class_colours(predicted[:2]))


def test_the_targets_masks_are_drawn_in_the_colours_of_the_predicted_classes():
    # Input | ground truth | prediction: source="targets" was refused, and a mask drawn by hand
    # stretched each image's classes to its own greys.
    from monitor.callbacks.images import class_colours
    monitor, sink = monitor_with(Images(source="targets", count=2), Images(source="outputs", count=2))
    masks = torch.randint(0, 3, (4, 6, 6))
    monitor.step_end(inputs=torch.rand(4, 1, 6, 6), targets=masks, outputs=masks.clone())
    (truth,), (predicted,) = sink.of(ImageRecord, "targets"), sink.of(ImageRecord, "outputs")
    assert torch.equal(truth.pixels, class_colours(masks[:2])) and torch.equal(truth.pixels, predicted.pixels)


def test_a_3d_model_s_volumes_show_their_middle_slice_its_masks_too_said_once(caplog):
    from monitor.callbacks.images import class_colours
    monitor, sink = monitor_with(Images(every=1, source="outputs", count=2), Images(every=1, count=2))
    masks = torch.randint(0, 3, (4, 16, 8, 8))  # N x D x H x W
    logits = torch.nn.functional.one_hot(masks, 3).permute(0, 4, 1, 2, 3).float() * 5  # N x 3 x D x H x W
    volumes = torch.rand(4, 1, 16, 8, 8)
    with caplog.at_level("WARNING", logger="monitor"):
        for _ in range(2):
            monitor.step_end(inputs=volumes, outputs=logits, targets=masks)
    (outputs, _), (inputs, _) = sink.of(ImageRecord, "outputs"), sink.of(ImageRecord, "inputs")
    assert torch.equal(outputs.pixels, class_colours(masks[:2, 8]))  # three classes, beside their masks: not RGB
    assert torch.equal(inputs.pixels, volumes[:2, :, 8])
    assert [r.getMessage() for r in caplog.records] == [
        "monitor: Images(source='outputs') draws slice 8 of the 16 along dim 2 of its 5-d outputs, shape "
        "(4, 3, 16, 8, 8) (monitor.log.video shows them all, N x T x C x H x W: a Conv3d's batch as "
        "x.permute(0, 2, 1, 3, 4))",
        "monitor: Images(source='inputs') draws slice 8 of the 16 along dim 2 of its 5-d inputs, shape "
        "(4, 1, 16, 8, 8) (monitor.log.video shows them all, N x T x C x H x W: a Conv3d's batch as "
        "x.permute(0, 2, 1, 3, 4))"]


def test_a_3d_segmentation_s_label_volumes_as_targets_show_the_inputs_middle_slice_in_class_colours():
    # Images(source="targets") took (N, D, H, W) labels for N x 16-channel images: colours by depth
    from monitor.callbacks.images import class_colours
    masks = torch.randint(0, 3, (4, 16, 8, 8))
    volumes = torch.rand(4, 1, 16, 8, 8)
    for given in (masks, masks[:, None]):  # as cross_entropy takes them, and with a channel
        monitor, sink = monitor_with(Images(every=1, source="targets", count=2))
        monitor.step_end(inputs=volumes, targets=given)
        assert torch.equal(sink.of(ImageRecord, "targets")[0].pixels, class_colours(masks[:2, 8]))
    monitor, sink = monitor_with(Images(every=1, source="targets", count=2))
    maps = torch.randint(0, 3, (4, 8, 8))
    monitor.step_end(inputs=torch.rand(4, 3, 8, 8), targets=maps)  # a 2-d segmentation's: as before
    assert torch.equal(sink.of(ImageRecord, "targets")[0].pixels, class_colours(maps[:2]))


def test_a_batch_of_three_grey_images_with_their_masks_stays_three_images():
    monitor, sink = monitor_with(Images(count=8))
    monitor.step_end(inputs=torch.rand(3, 28, 28), targets=torch.randint(0, 4, (3, 28, 28)))
    assert tuple(sink.of(ImageRecord)[0].pixels.shape) == (3, 1, 28, 28)


def test_a_model_s_dict_of_outputs_as_images_is_refused_naming_its_keys():
    monitor, _ = monitor_with(Images(every=1, source="outputs", captions=None), raise_errors=True)
    with pytest.raises(TypeError, match=r"got a dict of \['mask', 'box'\]: pass one of them, e.g. "
                                        r"step_end\(outputs=out\['mask'\]\)"):
        monitor.step_end(outputs={"mask": torch.rand(2, 3, 4, 4), "box": torch.rand(2, 4)})
    output = dataclasses.make_dataclass("SegmenterOutput", ["mask", "loss"])(torch.rand(2, 3, 4, 4), torch.ones(()))
    with pytest.raises(TypeError, match=r"got a SegmenterOutput of \['mask', 'loss'\]: .* step_end\(outputs=out.mask\)"):
        monitor.step_end(outputs=output)
    inputs, _ = monitor_with(Images(every=1, captions=None), raise_errors=True)
    with pytest.raises(TypeError, match=r"got a dict of \['feats', 'lengths'\]: pass one of them, e.g. "
                                        r"step_end\(inputs=batch\['feats'\]\)"):  # a collate_fn's dict batch
        inputs.step_end(inputs={"feats": torch.rand(2, 80, 50), "lengths": torch.tensor([50, 40])})
    losses = {"loss_cls": torch.tensor(0.7), "loss_box": torch.tensor(0.2)}  # a detector's outputs in training
    with pytest.raises(TypeError, match=r"got a dict of 2 numbers \(loss_cls, loss_box: losses\?\); pass images, or "
                                        r"draw the inputs, Images\(source='inputs'\)"):
        monitor.step_end(outputs=losses)


@pytest.mark.parametrize("batch", ["columns", "images and labels"])
def test_a_tuple_of_a_batch_s_parts_as_images_is_refused_naming_their_shapes(batch):
    # Refused naming only its last part's shape ("got shape (64,)"), or its dtypes, not the tuple
    monitor, _ = monitor_with(Images(every=1, captions=None), raise_errors=True)
    inputs = (torch.zeros(64, 2, dtype=torch.long), torch.zeros(64, 3)) if batch == "columns" else \
        (torch.rand(64, 3, 8, 8), torch.zeros(64))
    shapes = r"\(64, 2\), \(64, 3\)" if batch == "columns" else r"\(64, 3, 8, 8\), \(64,\)"
    with pytest.raises(TypeError, match=rf"Images\(source='inputs'\) needs images .* got a tuple of 2: "
                                        rf"{shapes}; pass the images alone, e.g. step_end\(inputs=batch\[0\]\)"):
        monitor.step_end(inputs=inputs)


@pytest.mark.parametrize("shape, logged", [((6, 3, 5, 7), (4, 3, 5, 7)), ((3, 5, 7), (1, 3, 5, 7)),
                                           ((6, 5, 7), (4, 1, 5, 7)), ((5, 7), (1, 1, 5, 7))])
def test_images_accept_nchw_chw_nhw_and_hw(shape, logged):
    monitor, sink = monitor_with(Images(count=4, captions=None))
    monitor.step_end(inputs=torch.randint(0, 255, shape, dtype=torch.uint8))
    assert tuple(sink.of(ImageRecord)[0].pixels.shape) == logged


@pytest.mark.parametrize("layout", ["NHWC", "HWC", "HWC RGBA", "NHWC grey"])
def test_channels_last_images_from_a_dataset_without_to_tensor_are_shown_as_they_look(layout):
    # numpy's and PIL's layout: a batch was drawn as 32 grey stripes 3 pixels tall, or refused
    monitor, sink = monitor_with(Images(count=4, captions=None))
    channels = {"HWC RGBA": 4, "NHWC grey": 1}.get(layout, 3)
    nchw = torch.randint(0, 255, (6, channels, 32, 48), dtype=torch.uint8)
    inputs = nchw.permute(0, 2, 3, 1) if layout.startswith("NHWC") else nchw[0].permute(1, 2, 0)
    monitor.step_end(inputs=inputs)
    (record,) = sink.of(ImageRecord)
    assert torch.equal(record.pixels, nchw[:4] if layout.startswith("NHWC") else nchw[:1])


@pytest.mark.parametrize("count, batch, targets, logged", [
    (3, 16, torch.arange(16), (3, 1, 28, 28)),  # the first 3 of an NHW batch: three images, three captions
    (8, 3, torch.arange(3), (3, 1, 28, 28)),    # a last batch of 3, told apart by its 3 labels
    (8, 3, None, (1, 3, 28, 28)),               # no labels: one CHW image
])
def test_a_grayscale_nhw_batch_stays_a_batch_whatever_its_length(count, batch, targets, logged):
    monitor, sink = monitor_with(Images(every=1, count=count))
    monitor.step_end(inputs=torch.rand(batch, 28, 28), targets=targets)
    (record,) = sink.of(ImageRecord)
    assert tuple(record.pixels.shape) == logged
    assert (record.captions is None) == (targets is None)


@pytest.mark.parametrize("inputs, error, match", [
    (torch.rand(2, 5, 5, 5), ValueError, "1 or 3 channels"),
    (torch.rand(2, 1, 1, 1, 5, 5), ValueError, "NCHW, CHW, NHW or HW"),
    ([[0.0, 1.0]], TypeError, "needs images .* got a list of 1: list;"),
    (torch.ones(2, 3, 4, 4, dtype=torch.complex64), TypeError, "real numbers"),
    (None, ValueError, r"pass inputs= to monitor.step_end"),
])
def test_images_reject_what_is_not_an_image_batch(inputs, error, match):
    monitor, _ = monitor_with(Images(captions=None))
    with pytest.raises(error, match=match):
        monitor.step_end(inputs=inputs)


@pytest.mark.parametrize("inputs, targets, view", [
    (torch.randint(0, 1000, (16, 24)), None, "-1, 1, 28, 28"),  # a text model's token ids
    (torch.rand(64, 784), torch.zeros(64, dtype=torch.long), "-1, 1, 28, 28"),  # flattened images, labelled
    (torch.rand(16, 1024), torch.zeros(16, dtype=torch.long), "-1, 1, 32, 32"),  # a VAE's 32 x 32
    (torch.rand(8, 3072), torch.zeros(8, dtype=torch.long), "-1, 3, 32, 32"),  # CIFAR's, flattened
    (torch.rand(16, 3, dtype=torch.float64), torch.rand(16, 8, 8), "-1, 1, 28, 28"),  # a simulation's parameters
    (torch.rand(16, 3), None, "-1, 1, 28, 28"),  # three numbers a row: no image
])
def test_a_batch_of_vectors_is_refused_as_images_saying_how_to_pass_images(inputs, targets, view):
    monitor, sink = monitor_with(Images(every=1, captions=None))
    with pytest.raises(TypeError, match=rf"Images\(source='inputs'\) needs images, got a batch of {inputs.shape[0]} "
                                        rf"vectors of {inputs.shape[1]} values \({inputs.dtype}: token ids, .*"
                                        rf"step_end\(inputs=x.view\({view}\)\), "
                                        rf"{'draw the targets, ' if targets is not None and targets.dim() == 3 else ''}"
                                        rf"{'.*' if targets is not None and targets.dim() == 3 else ''}or leave Images out"):
        monitor.step_end(inputs=inputs, targets=targets)
    monitor.step_end(inputs=torch.rand(28, 28), targets=3)  # one image, its label, is still one
    monitor.step_end(inputs=torch.rand(28, 28), targets=torch.rand(28, 28) > 0.5)  # ... and its mask
    assert len(sink.of(ImageRecord)) == 2


@pytest.mark.parametrize("signals", [torch.randn(32, 1, 128), torch.randn(4, 2, 16000)])
def test_a_batch_of_one_dimensional_signals_is_refused_as_images_saying_how_to_draw_them(signals):
    monitor, sink = monitor_with(Images(every=1, captions=None))
    with pytest.raises(TypeError, match=rf"needs images, got a batch of {signals.shape[0]} series of "
                                        rf"{signals.shape[1]} channels? x {signals.shape[2]} values \(N x C x L: "
                                        rf".*add_figure\(tag, figure, step\), .*add_audio.*or leave Images out"):
        monitor.step_end(inputs=signals)
    monitor.step_end(inputs=torch.rand(8, 4, 28))  # a batch of small images four pixels high is still one
    monitor.step_end(inputs=torch.rand(8, 28, 28))
    assert len(sink.of(ImageRecord)) == 2


@pytest.mark.parametrize("targets", [torch.randn(64, 8, 3), torch.randint(0, 2, (64,))])
def test_a_batch_first_batch_of_sequences_is_refused_as_images_and_one_photo_is_not(targets):
    # nn.TransformerEncoder(batch_first=True)'s windows, (N, L, C): once drawn as one RGB picture of noise.
    monitor, sink = monitor_with(Images(every=1, captions=None))
    with pytest.raises(TypeError, match=r"needs images, got a batch of 64 series of 32 steps x 3 features \(N x L x C: "
                                        r"batch_first sequences.*add_figure\(tag, figure, step\), or leave Images out"):
        monitor.step_end(inputs=torch.randn(64, 32, 3), targets=targets)
    monitor.step_end(inputs=torch.rand(32, 48, 3), targets=torch.tensor(1))  # one HWC photo and its label
    monitor.step_end(inputs=torch.rand(32, 48, 3))
    assert len(sink.of(ImageRecord)) == 2


def test_images_that_are_not_images_are_reported_once_and_training_goes_on(caplog):
    monitor, sink = monitor_with(Images(every=1), Scalars(), raise_errors=False)
    with caplog.at_level(logging.WARNING, logger="monitor"):
        for _ in range(4):
            monitor.step_end(loss=1.0, inputs=torch.rand(8, 5, 2, 2), targets=torch.zeros(8))
    assert len(caplog.records) == 1 and "Images" in caplog.text and "1 or 3 channels" in caplog.text
    assert len(sink.points("loss")["train"]) == 4 and sink.of(ImageRecord) == []


def test_images_every_logs_the_first_step_and_each_every_th_after_it():
    monitor, sink = monitor_with(Images(every=50, captions=None))
    for _ in range(120):
        monitor.step_end(inputs=torch.rand(2, 1, 4, 4))
    assert [r.x for r in sink.of(ImageRecord)] == [1, 51, 101]


# --- on a real server ---------------------------------------------------------------------------
def test_the_image_grid_arrives_with_its_captions(visdom_server, read_window_raw, tmp_path):
    _, x, y = model_and_data()
    names = ["zero", "one", "two"]
    with live_monitor(visdom_server, "live-images", tmp_path,
                      Images(every=1, count=4, class_names=names)) as monitor:
        monitor.step_end(inputs=x, targets=y)
        assert monitor.flush(timeout=10)
    png = shown_grid(read_window_raw(visdom_server, "live-images", "inputs"))
    assert png == encode_grid(x[:4], [names[i] for i in y[:4].tolist()], heading="step 1")


def test_a_numpy_spectrogram_and_a_pil_image_arrive_as_the_same_tensors_would(visdom_server, read_window_raw,
                                                                               tmp_path):
    # librosa's mel_db is a numpy array; a dataset without ToTensor hands PIL images (HWC).
    from PIL import Image
    mel_db = np.linspace(-80, 0, 40 * 30, dtype=np.float32).reshape(40, 30)
    as_tensor = torch.from_numpy(mel_db.copy())
    photo = Image.fromarray(np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3))
    with live_monitor(visdom_server, "live-arrays", tmp_path) as monitor:
        monitor.log.images("spectrogram", 1, mel_db, value_range=(-80, 0))
        mel_db[:] = 0  # the loop's buffer, used again: the grid keeps the values of the call
        monitor.log.images("spectrogram tensor", 1, as_tensor, value_range=(-80, 0))
        monitor.log.images("photo", 1, photo)
        monitor.log.images("photo tensor", 1, torch.from_numpy(np.array(photo)).permute(2, 0, 1))
        assert monitor.flush(timeout=10)
    for window in ("spectrogram", "photo"):
        assert shown_grid(read_window_raw(visdom_server, "live-arrays", window)) == \
            shown_grid(read_window_raw(visdom_server, "live-arrays", f"{window} tensor"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_a_grid_of_more_than_the_most_pixels_is_shrunk_before_it_is_copied_and_a_big_figure_is_not(dtype):
    from monitor.log import MOST_PIXELS

    monitor, sink = monitor_with(Images(every=1, count=2, captions=None))
    side = math.isqrt(MOST_PIXELS)
    big = torch.zeros(4, 3, 2 * side, side, dtype=dtype)
    big[:, :, :side] = 200  # the top half bright
    monitor.step_end(inputs=big)
    (record,) = sink.of(ImageRecord)
    pixels = record.pixels
    assert pixels.dtype == dtype and tuple(pixels.shape) == (2, 3, side, side // 2)  # 2 of 2 x 1: half a side
    assert pixels[:, :, : side // 2].eq(200).all() and pixels[:, :, side // 2:].eq(0).all()
    figure = torch.rand(3, 1200, 2400)  # a matplotlib figure of 24 x 12 inches at 100 dpi
    monitor.log.images("figure", 1, figure)
    assert torch.equal(sink.of(ImageRecord)[-1].pixels[0], figure)


@pytest.mark.parametrize("targets", [7, torch.tensor(7), np.int64(7)])
def test_one_image_is_captioned_with_its_one_label(targets):
    monitor, sink = monitor_with(Images(every=1, class_names={7: "horse"}))
    monitor.step_end(inputs=torch.rand(3, 8, 8), targets=targets)
    assert list(sink.of(ImageRecord)[0].captions) == ["horse"]


def test_a_batch_of_one_squeezed_is_captioned_with_the_argmax_of_its_squeezed_scores():
    # x.squeeze(), y.squeeze(), out.squeeze() of a last batch of one: its 10 scores read as 10 images' labels
    names = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    monitor, sink = monitor_with(Images(every=1, captions="both", class_names=names))
    scores = torch.full((10,), -6.0)
    scores[2] = 1.0
    monitor.step_end(inputs=torch.rand(28, 28), targets=torch.tensor(3), outputs=scores)
    assert list(sink.of(ImageRecord)[0].captions) == ["cat / bird"]
    binary, sink = monitor_with(Images(every=1, count=1, captions="predictions", class_names=["no", "yes"]))
    binary.step_end(inputs=torch.rand(4, 1, 8, 8), outputs=torch.tensor([2.0, -1.0, -1.0, -1.0]))  # a score each
    assert list(sink.of(ImageRecord)[0].captions) == ["yes"]


def test_labels_in_a_numpy_array_caption_the_images():
    monitor, sink = monitor_with(Images(every=1, count=2))
    monitor.step_end(inputs=torch.rand(4, 1, 8, 8), targets=np.array([3, 1, 4, 1]))
    assert list(sink.of(ImageRecord)[0].captions) == ["3", "1"]


def test_one_grayscale_image_with_its_label_is_one_captioned_image():
    monitor, sink = monitor_with(Images(every=1))
    monitor.step_end(inputs=torch.rand(1, 8, 8), targets=torch.tensor(2))
    (record,) = sink.of(ImageRecord)
    assert tuple(record.pixels.shape) == (1, 1, 8, 8) and list(record.captions) == ["2"]


def test_rgba_images_are_laid_over_white_and_bool_masks_are_black_and_white(visdom_server, read_window_raw, tmp_path):
    # TensorBoard's add_images takes both: a sprite sheet's RGBA, a segmentation's masks.
    rgba = torch.rand(3, 4, 5, 5)
    rgba[0, 3] = 0.0   # fully transparent: white
    rgba[1, 3] = 1.0   # opaque: its colours
    masks = torch.rand(4, 5, 5) > 0.5  # NHW: four masks
    with live_monitor(visdom_server, "live-rgba", tmp_path, Images(every=1, count=3, captions=None)) as monitor:
        monitor.step_end(inputs=rgba)
        monitor.log.window("masks", title="masks")
        monitor.log.images("masks", 1, masks)
        assert monitor.flush(timeout=10)
    from test_imaging import decode, tile
    grid = decode(shown_grid(read_window_raw(visdom_server, "live-rgba", "inputs")))
    heading = grid.shape[0] - (PAD + 2 * (5 + PAD))  # two rows of two under the step's heading
    tiles = [tile(grid[heading:], i, 2, 5, 5).astype(float) for i in range(3)]
    colours, alpha = (rgba[:, :3] * 255).round().permute(0, 2, 3, 1).numpy(), rgba[:, 3, :, :, None].numpy()
    assert grid.shape[2] == 3 and (tiles[0] == 255).all()
    assert np.abs(tiles[1] - colours[1]).max() <= 1
    assert np.abs(tiles[2] - (colours[2] * alpha[2] + 255 * (1 - alpha[2]))).max() <= 1.5
    shown = decode(shown_grid(read_window_raw(visdom_server, "live-rgba", "masks")))
    heading = shown.shape[0] - (PAD + 2 * (5 + PAD))
    assert all(np.array_equal(tile(shown[heading:], i, 2, 5, 5), masks[i].numpy().astype(np.uint8) * 255)
               for i in range(4))


def test_a_detection_batch_of_images_of_their_own_sizes_is_shown_padded_to_the_largest():
    # torchvision's detection collate gives a tuple of CHW images: refused before ("got tuple").
    monitor, sink = monitor_with(Images(every=1, count=2))
    images = (torch.rand(3, 20, 30), torch.rand(3, 24, 16), torch.rand(3, 8, 8))
    targets = tuple({"boxes": torch.zeros(1, 4), "labels": torch.tensor([1])} for _ in images)
    monitor.step_end(loss=1.0, inputs=images, targets=targets)
    (grid,) = sink.of(ImageRecord)
    assert tuple(grid.pixels.shape) == (2, 3, 24, 30)
    assert torch.equal(grid.pixels[1, :, :24, :16], images[1]) and not grid.pixels[1, :, :, 16:].any()
    pixels = monitor.log  # the Log takes a list too, grey beside colour as colour
    pixels.images("mixed", 1, [torch.rand(1, 4, 4), torch.rand(3, 6, 2), torch.rand(5, 5)])
    assert tuple(sink.of(ImageRecord)[-1].pixels.shape) == (3, 3, 6, 5)
    with pytest.raises(ValueError, match=r"images must all have 1 or 3 channels, or all 4, got \[3, 4\]"):
        pixels.images("bad", 1, [torch.rand(3, 4, 4), torch.rand(1, 4, 4, 4)])  # an RGBA batch of one
    with pytest.raises(TypeError, match="or a list of images .CHW or HW, of any sizes., got str"):
        pixels.images("bad", 1, "cat.png")


def test_grids_too_large_to_read_every_step_are_skipped_while_one_waits_not_queued(tmp_path, caplog):
    # 8 random 512 x 512 images every step: the training process queued every grid, growing to
    # 7.5 GB in 300 steps, each step 5x slower, and close() ran out of time with points unsent.
    from monitor import Monitor, Scalars
    from monitor.runlog import RunLog

    batch = torch.rand(8, 3, 512, 512)
    waiting = []
    with caplog.at_level("WARNING", logger="monitor"):
        with Monitor([Scalars(), Images(every=1, captions=None)], env="large-grids", run_dir=tmp_path, port=1,
                     timeout=0.2) as monitor:
            for step in range(40):
                monitor.step_end(loss=1.0 / (step + 1), inputs=batch)
                waiting.append(monitor.log.images_waiting("inputs"))
    assert max(waiting) <= 1  # one grid in memory at a time, not a backlog
    entries = list(RunLog.read(tmp_path / RunLog.FILENAME))
    grids = [e["x"] for e in entries if e.get("k") == "image"]
    assert 1 <= len(grids) < 40 and grids[0] == 1
    assert [e["x"] for e in entries if e.get("win") == "loss" and e.get("k") == "points"] == list(range(1, 41))
    said = [r.getMessage() for r in caplog.records if "skips step" in r.getMessage()]
    assert len(said) == 1 and "Images(source='inputs') skips step" in said[0] and "every=1" in said[0]
    assert " MB each, are still being read by the sink" in said[0]


def test_small_grids_of_a_quick_loop_every_step_are_all_kept_while_the_sink_starts(tmp_path, caplog):
    # A student's every=1 on four 28 x 28 images: 1 to 3 grids of 3 arrived, "grids this large" blamed.
    from monitor import Monitor
    from monitor.runlog import RunLog

    with caplog.at_level("WARNING", logger="monitor"):
        with Monitor([Images(every=1, count=4)], env="small-grids", run_dir=tmp_path, port=1, timeout=0.2) as monitor:
            for step in range(6):
                monitor.step_end(loss=1.0, inputs=torch.rand(4, 1, 28, 28), targets=torch.arange(4))
    grids = [e["x"] for e in RunLog.read(tmp_path / RunLog.FILENAME) if e.get("k") == "image"]
    assert grids == [1, 2, 3, 4, 5, 6] and not [r for r in caplog.records if "skips step" in r.getMessage()]


def test_views_of_one_batch_show_each_sample_s_views_side_by_side_each_captioned_with_its_label():
    # A contrastive loop's batch: two augmentations of each image, one label each.
    monitor, sink = monitor_with(Images(every=1, count=8, class_names=["cat", "dog", "car", "ship", "bird"]))
    first, second = torch.rand(32, 3, 8, 8), torch.rand(32, 3, 8, 8)
    monitor.step_end(inputs=(first, second), targets=torch.arange(32) % 5)
    (grid,) = sink.of(ImageRecord)
    pixels = grid.pixels() if callable(grid.pixels) else grid.pixels
    assert torch.equal(pixels, torch.stack([first[:4], second[:4]], 1).flatten(0, 1))
    assert list(grid.captions) == ["cat", "cat", "dog", "dog", "car", "car", "ship", "ship"]
    assert grid.columns == 4  # two samples' pairs a row: none split over two rows (3 columns did)
    monitor.step_end(inputs=[first, second, first])  # three views, no labels: two samples' in 8 places
    assert sink.of(ImageRecord)[-1].pixels.shape[0] == 6 and sink.of(ImageRecord)[-1].captions is None
    assert sink.of(ImageRecord)[-1].columns == 3
    local = torch.rand(32, 3, 4, 4)  # DINO's multi-crop: two global crops and a smaller local one
    monitor.step_end(inputs=(first, second, local), targets=torch.arange(32) % 5)
    crops = sink.of(ImageRecord)[-1]
    assert crops.columns == 3 and crops.pixels.shape == (6, 3, 8, 8)  # two samples' crops, padded to the largest
    assert torch.equal(crops.pixels[2, :, :4, :4], local[0]) and crops.pixels[2, :, 4:].eq(0).all()
    assert list(crops.captions) == ["cat", "cat", "cat", "dog", "dog", "dog"]


def test_a_phase_without_images_after_the_run_drew_some_is_not_a_failure(caplog):
    # A linear probe after SimCLR's pretraining passes no inputs: Images "failed in on_step_end".
    monitor, sink = monitor_with(Images(every=1, captions=None), raise_errors=False)
    with caplog.at_level("WARNING", logger="monitor"):
        monitor.step_end(loss=3.9, inputs=torch.rand(2, 1, 4, 4))
        for _ in range(3):
            monitor.step_end(loss=0.3)
    assert len(sink.of(ImageRecord)) == 1 and not caplog.records


def test_a_value_range_shows_a_generator_s_samples_alike_whatever_they_overshoot_or_lack():
    # [-1, 1] samples: one pixel at 1.01 made the grid stretch image by image (the same dim
    # sample shown 0 / 255, then 0 / 160), and a batch with no negative value read as [0, 1]
    # (its mid-grey background black). With value_range the same value is the same grey.
    from monitor.entries import read

    dim = torch.full((2, 1, 4, 4), -0.9)
    dim[:, :, 1:3, 1:3] = 0.3
    over = dim.clone()
    over[1, 0, 0, 0] = 1.01
    monitor, sink = monitor_with(Images(every=1, count=2, captions=None, value_range=(-1, 1)))
    for batch in (dim, over, torch.zeros(2, 1, 4, 4)):
        monitor.step_end(inputs=batch)
    shown = [read(record).pixels for record in sink.of(ImageRecord)]
    grey = {value: round((value + 1) * 127.5) for value in (-0.9, 0.3, 0.0)}  # 13, 166, 128
    for pixels in shown[:2]:
        assert pixels[0, 0, 0, 0] == grey[-0.9] and pixels[0, 0, 1, 1] == grey[0.3]
    assert shown[1][1, 0, 0, 0] == 255 and (shown[2] == grey[0.0]).all()
    videos = torch.linspace(-3, 1, 8).reshape(1, 8, 1, 1, 1).expand(1, 8, 1, 2, 2)  # noise, then the image
    monitor.log.video("denoising", 1, videos, value_range=(-1, 1))
    frames = read(sink.of(ImageRecord, "denoising")[0]).pixels
    assert frames[0, -1].max() == 255 and frames[0, 0].max() == 0  # the last frame white, the noise clipped
    with pytest.raises(ValueError, match=r"value_range must be \(low, high\), two finite numbers, low below high, "
                                         r"e.g. \(-1, 1\), got \(1, -1\)"):
        Images(value_range=(1, -1))
    with pytest.raises(ValueError, match=r"value_range must be .* got 'wide'"):
        monitor.log.video("v", 0, torch.rand(1, 2, 1, 4, 4), value_range="wide")
