"""Images: a grid of the first images of a batch, captioned with their labels or predictions."""
from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from typing import Any, Mapping, Sequence

import torch

from monitor import checks
from monitor.callbacks._every import is_due
from monitor.checks import one_of, positive_int
from monitor.core import Callback, LoopState, Monitor
from monitor.log import Log, channels_first
from monitor.records import LabelCaptions, Order

_log = logging.getLogger("monitor")


WAITING_BYTES = 16 * 2**20  # the grids a window may have waiting for the sink, in bytes and in number: small
WAITING_GRIDS = 8           # ones queue (a quick loop's every=1), large ones wait for the one before


class Images(Callback):
    """Shows the first ``count`` images of ``state.inputs`` (or ``outputs``) every ``every`` steps.

        monitor = Monitor([Images(every=100, captions="both", class_names=CLASSES)], env="cifar")
        monitor.step_end(loss=loss, inputs=x, targets=y, outputs=logits)
        # window "inputs": 8 images captioned "cat / dog" (target / predicted)

    Images are NCHW, CHW, NHW or HW (a 3-d model's N x C x D x H x W: its middle slice), with 1 or
    3 channels (NCHW also 4: RGBA, laid over white),
    or channels last (NHWC, HWC: a Dataset without ``ToTensor``) where the last dim can only be the channels,
    float or uint8 in any range (the sink normalises them for display), or bool masks (a 2-d
    batch of vectors, token ids or a table's rows, is refused saying so); a tuple of NCHW
    batches of one shape is views of one batch (a contrastive loop's augmentations), each
    sample's shown side by side; a 3-d
    batch of 3 is three NHW images where the targets give 3 labels or 3 masks, else one CHW
    image. Only the first ``count`` are copied, and only once the sink has taken in the grid
    before (images too large to read every ``every`` steps come less often, said once, instead
    of waiting in memory). ``captions`` is
    ``"targets"`` (one label per image: a 1-d tensor or a list), ``"predictions"`` (the argmax
    over dim 1 of 2-d outputs, or 1-d outputs as they are; with two ``class_names``, one score
    per image is a binary classifier's: a logit above 0, or a probability above 0.5 where all
    are in [0, 1]), ``"both"`` or None; multi-label targets (N, K of 0 and 1) give each image
    its classes, and with ``"both"`` those predicted (scored above 0, 0.5 for probabilities); a source that
    is not one label per image (masks, None) gives no caption. ``source="targets"`` draws a
    segmentation's masks in their classes' colours. ``source="outputs"`` of 2 or more
    than 3 channels (a segmentation's class scores), or of any number beside masks (N, H, W
    integers or bools) as targets, shows each pixel's most likely class in a colour of its own
    (:func:`class_colours`; one channel: a binary segmentation's logit above 0, or probability
    above 0.5). Integer labels are looked up in
    ``class_names`` (a sequence or a mapping) when given. Labels are copied on their device and
    turned into captions by the sink, so logging a grid never waits for the device.
    ``value_range=(-1, 1)`` shows -1 black and 1 white whatever a batch holds (a generator's
    samples that overshoot, a dim batch with no negative value): see :meth:`Log.images`.
    """

    def __init__(self, every: int = 50, count: int = 8, source: str = "inputs",
                 captions: str | None = "targets",
                 class_names: Sequence[str] | Mapping[int, str] | None = None,
                 value_range: tuple[float, float] | None = None) -> None:
        self.every = positive_int("every", every)
        self.count = positive_int("count", count)
        self.source = one_of("source", source, ("inputs", "outputs", "targets"))
        self.captions = one_of("captions", captions, ("targets", "predictions", "both", None))
        if class_names is not None and (isinstance(class_names, (str, bytes))
                                        or not isinstance(class_names, (Sequence, Mapping))):
            raise TypeError(f"class_names must be a sequence or a mapping of label to name, "
                            f"got {type(class_names).__name__}")
        self.class_names = class_names
        self.value_range = checks.value_range("value_range", value_range)
        self._binary = class_names is not None and len(class_names) == 2  # one score per image: which class
        self._said_no_predictions = False
        self._said_names = False
        self._said_behind = False
        self._said_slice = False
        self._drew = False  # a grid drawn this run: a step without the batch then is a phase without images
        self._grid_bytes = 0  # the last grid's, as logged

    def on_attach(self, monitor: Monitor) -> None:
        self._drew = False  # given to another Monitor (a fold's): its run's grids

    def on_step_end(self, state: LoopState, log: Log) -> None:
        if (state.step - 1) % self.every:  # is_due, inline: most steps end here
            return
        waiting = log.images_waiting(self.source)
        if waiting and (waiting * self._grid_bytes >= WAITING_BYTES or waiting >= WAITING_GRIDS):
            # The sink has not taken in the grids before (large ones, or a sink starting): skip, not queue
            if not self._said_behind:
                self._said_behind = True
                _log.warning("monitor: Images(source=%r) skips step %d: %d grid(s) before it, of %.1f MB each, are "
                             "still being read by the sink, so grids come less often than every=%d, each once those "
                             "before are taken in; the loop is not held up (reported once)",
                             self.source, state.step, waiting, self._grid_bytes / 2**20, self.every)
            return
        images = getattr(state, self.source)
        if images is None:
            if self._drew:  # a linear probe after the pretraining's images: nothing to draw
                return
            raise ValueError(f"Images needs the batch: pass {self.source}= to monitor.step_end(...), "
                             f"got {self.source}=None")
        names = _output_names(images)
        if isinstance(images, Mapping) and images and all(
                isinstance(v, torch.Tensor) and v.dim() == 0 for v in images.values()):  # a detector's losses
            raise TypeError(f"Images(source={self.source!r}) needs images, got a dict of {len(images)} numbers "
                            f"({', '.join(map(str, list(images)[:4]))}: losses?); pass images"
                            + (", or draw the inputs, Images(source='inputs')" if self.source != "inputs" else ""))
        if names is not None:  # a model's dict, namedtuple or dataclass of outputs
            first = names[0] if names else "logits"
            holder = "out" if self.source == "outputs" else "batch"  # a model's outputs, or a dict batch
            part = f"{holder}[{first!r}]" if isinstance(images, Mapping) else f"{holder}.{first}"
            raise TypeError(f"Images(source={self.source!r}) needs images, got a {type(images).__name__} of "
                            f"{names}: pass one of them, e.g. step_end({self.source}={part})")
        if isinstance(images, (list, tuple)) and _views(images):
            # Views of one batch (a contrastive loop's two augmentations): each sample's side by side
            samples = min(max(1, self.count // len(images)), *map(len, images))  # whole samples: all their views
            if len({view.shape[2:] for view in images}) == 1:
                grid = torch.stack([view[:samples] for view in images], 1).flatten(0, 1)
            else:  # multi-crop (DINO's global and local crops): each sample's crops padded to the largest
                grid = [view[i] for i in range(samples) for view in images]
            captions = self._caption(state, samples)
            views = len(images)  # a row holds whole samples, about as many rows as tiles a row
            self._show(log, state.step, grid, captions and captions.repeated(views),
                       views * math.ceil(math.sqrt(samples * views) / views))
            return
        if isinstance(images, (list, tuple)):
            if not (images and all(isinstance(i, torch.Tensor) and i.dim() in (2, 3) for i in images)
                    and len({(i.dtype, i.device) for i in images}) == 1):  # not a detection batch's images
                parts = ", ".join(str(tuple(i.shape)) if isinstance(i, torch.Tensor) else type(i).__name__
                                  for i in images[:4]) + (", ..." if len(images) > 4 else "")
                raise TypeError(f"Images(source={self.source!r}) needs images (a tensor, or a list of CHW or HW "
                                f"images of one dtype), got a {type(images).__name__} of {len(images)}: {parts}; "
                                f"pass the images alone, e.g. step_end({self.source}=batch[0])")
            images = list(images[: self.count])  # a detection batch: images of their own sizes, padded by Log
            self._show(log, state.step, images, self._caption(state, len(images)))
            return
        targets = state.targets
        volumes = state.inputs if isinstance(state.inputs, torch.Tensor) and state.inputs.dim() == 5 else None
        if volumes is not None and self.source == "targets" and isinstance(images, torch.Tensor) and \
                images.dim() == 4 and _label_maps(images[:, 0]) and images.shape[1:] == volumes.shape[2:]:
            images = images[:, images.shape[1] // 2]  # a 3-d segmentation's labels (N, D, H, W): the inputs' slice
        if isinstance(images, torch.Tensor) and images.dim() == 5:  # a volume's (N, C, D, H, W): its middle slice
            images, targets = self._middle_slice(images, targets)
            if images.shape[1] == 1 and _label_maps(images[:, 0]):  # labels given as (N, 1, D, H, W): their colours
                images = images[:, 0]
        if isinstance(images, torch.Tensor):
            if images.dim() == 2 and (images.dtype not in _IMAGE_INTEGERS and not images.is_floating_point()
                                      or _one_label_each(state.targets, images.shape[0])
                                      or _one_target_each(state.targets, images.shape) or images.shape[1] <= 4):
                other = next((name for name in ("outputs", "targets") if name != self.source and
                              isinstance(getattr(state, name), torch.Tensor) and getattr(state, name).dim() >= 3),
                             None)  # a regression's fields: images to draw
                raise TypeError(f"Images(source={self.source!r}) needs images, got a batch of {images.shape[0]} "
                                f"vectors of {images.shape[1]} values ({images.dtype}: token ids, features, "
                                f"scores, parameters?): pass images shaped N x C x H x W, e.g. step_end("
                                f"{self.source}=x.view({_image_shape(images.shape[1])})), " +
                                (f"draw the {other}, Images(source={other!r}), " if other else "") +
                                "or leave Images out")
            if images.dim() == 3 and images.shape[1] <= 4 and images.shape[2] >= 8 * images.shape[1]:
                raise TypeError(f"Images(source={self.source!r}) needs images, got a batch of {images.shape[0]} "
                                f"series of {images.shape[1]} channel{'s' if images.shape[1] > 1 else ''} x "
                                f"{images.shape[2]} values (N x C x L: a Conv1d's signals, audio): draw a few as "
                                f"curves, SummaryWriter(monitor=monitor).add_figure(tag, figure, step), listen to "
                                f"them, add_audio(tag, x[0, 0], step, sample_rate), or leave Images out")
            if images.dim() == 3 and images.shape[2] <= 4 and images.shape[1] >= 8 * images.shape[2] and \
                    _shares_batch(state, self.source, images.shape[0]):  # not one HWC image: a batch of its size
                raise TypeError(f"Images(source={self.source!r}) needs images, got a batch of {images.shape[0]} "
                                f"series of {images.shape[1]} steps x {images.shape[2]} feature"
                                f"{'s' if images.shape[2] > 1 else ''} (N x L x C: batch_first sequences, a "
                                f"forecaster's windows): draw a few as curves, SummaryWriter(monitor=monitor)"
                                f".add_figure(tag, figure, step), or leave Images out")
            images = channels_first(images)  # a view: Log copies only the first count
        batched = isinstance(images, torch.Tensor) and (
            images.dim() == 4 or images.dim() == 3 and (images.shape[0] not in (1, 3) or
                                                          _one_label_each(targets, images.shape[0]) or
                                                          _masks(targets, images.shape) or _label_maps(images)))
        if batched:
            images = images[: self.count]  # a view: Log copies only these
            if _label_maps(images):  # a segmentation's predicted classes (argmax), or its masks: their colours
                images = class_colours(images.detach())
            else:
                if images.dim() == 3:  # NHW: say so, or the first 3 would read as one RGB image
                    images = images[:, None]
                if self.source == "outputs" and (images.shape[1] not in (1, 3) or _masks(targets, images.shape)) \
                        or self.source == "targets" and images.shape[1] not in (1, 3):  # one-hot masks
                    # A segmentation's class scores (2 or more than 3 classes, or any number beside
                    # masks as targets): each pixel's most likely class; one channel: a binary one's.
                    scores = images.detach()
                    images = class_colours(scores.argmax(1) if scores.shape[1] > 1 else _binary(scores[:, 0]))
        self._show(log, state.step, images, self._caption(state, images.shape[0] if batched else 1, not batched))

    def _middle_slice(self, volumes: torch.Tensor, targets: Any) -> tuple[torch.Tensor, Any]:
        """The middle slice of a 3-d model's volumes, N x C x D x H x W (a video's, N x T x C x H x W,
        its middle frame), and of the targets' masks (N x D x H x W) alike; said once."""
        depth_at = 1 if volumes.shape[1] not in (1, 3) and volumes.shape[2] in (1, 3) else 2
        middle = volumes.shape[depth_at] // 2
        if not self._said_slice:
            self._said_slice = True
            _log.warning("monitor: Images(source=%r) draws slice %d of the %d along dim %d of its 5-d %s, shape %s "
                         "(monitor.log.video shows them all, N x T x C x H x W: a Conv3d's batch as "
                         "x.permute(0, 2, 1, 3, 4))", self.source, middle, volumes.shape[depth_at],
                         depth_at, self.source, tuple(volumes.shape))
        if isinstance(targets, torch.Tensor) and targets.dim() == 4 and \
                targets.shape[1:] == volumes.shape[2:] and not targets.is_floating_point():
            targets = targets[:, middle]
        return volumes.select(depth_at, middle), targets

    def _show(self, log: Log, step: int, images: Any, captions: LabelCaptions | None,
              columns: int | None = None) -> None:
        self._grid_bytes = sum(i.numel() * i.element_size() for i in images) if isinstance(images, list) else \
            images.numel() * images.element_size()
        log.window(self.source, order=Order.IMAGES, title=self.source)
        log.images(self.source, step, images, captions, value_range=self.value_range, columns=columns)
        self._drew = True

    def _caption(self, state: LoopState, count: int, one_image: bool = False) -> LabelCaptions | None:
        """The captions of ``count`` images; ``one_image``: a single image not in a batch (a batch of
        one squeezed), whose outputs squeezed alike are its class scores."""
        parts = []
        # Targets of K scores an image (N, K floats): multi-hot labels, told apart from other
        # vectors (boxes, soft labels) by the sink, where the values are read.
        rows = _rows(state.targets, count) if self.captions in ("targets", "both") else None
        if self.captions in ("targets", "both"):
            parts.append(rows if rows is not None else _labels(state.targets, count))
        scores = _rows(state.outputs, count) if rows is not None and self.captions == "both" else None
        if scores is not None and scores.shape[1] == rows.shape[1]:
            parts.append(scores)  # multi-label scores, or one class each: the sink sees which
        elif self.captions in ("predictions", "both"):
            outputs = state.outputs
            if one_image and isinstance(outputs, torch.Tensor) and outputs.dim() == 1 and outputs.shape[0] > 1 \
                    and outputs.is_floating_point():  # out.squeeze() of a batch of one: its class scores
                outputs = outputs[None]
            if isinstance(outputs, torch.Tensor) and outputs.dim() == 2 and outputs.shape[1] > 1:
                self._check_names(outputs.shape[1])
                outputs = outputs[:count].detach().argmax(1)
            elif self._binary and isinstance(outputs, torch.Tensor) and outputs.is_floating_point() and (
                    outputs.dim() == 1 or outputs.dim() == 2 and outputs.shape[1] == 1):
                outputs = _binary(outputs[:count].detach().reshape(-1))
            predicted = _labels(outputs, count)
            if predicted is None and (isinstance(outputs, (tuple, list)) or _output_names(outputs) is not None) \
                    and not self._said_no_predictions:
                self._said_no_predictions = True  # a model's dict or tuple (a tensor of maps: no caption, as masks)
                _log.warning("monitor: Images(captions=%r) shows no predictions: outputs must be class scores "
                             "(N, C) or one label or score per image, got a %s: pass the scores, e.g. "
                             "outputs=out['logits']", self.captions, type(outputs).__name__)
            parts.append(predicted)
        parts = [labels for labels in parts if labels is not None]
        return LabelCaptions(parts, self.class_names, count) if parts else None

    def _check_names(self, classes: int) -> None:
        """Says once where a sequence of class names is not one name per class of the scores."""
        names = self.class_names
        if self._said_names or names is None or isinstance(names, Mapping) or len(names) == classes:
            return
        self._said_names = True
        _log.warning("monitor: Images has %d class_names but the outputs score %d classes: %s",
                     len(names), classes,
                     f"classes {len(names)} to {classes - 1} are captioned by number" if len(names) < classes
                     else "check that the names are in the order of the scores")


def class_colours(labels: torch.Tensor) -> torch.Tensor:
    """Maps of class indices (N, H, W) as uint8 RGB images (N, 3, H, W), on their device: class 0
    black, the first classes far apart (index bits 0, 1, 2 add 160 to red, green, blue; bits
    3, 4, 5 add 64; then 24, then 6); indices repeat past 4095.

        class_colours(torch.tensor([[[0, 1], [2, 3]]]))[0, :, 1, 1]   # class 3: tensor([160, 160, 0])
    """
    bits = (labels.long() % 4096)[..., None] >> torch.arange(12, device=labels.device)  # (N, H, W, 12)
    levels = torch.tensor([160, 64, 24, 6], device=labels.device)
    rgb = ((bits & 1).unflatten(-1, (4, 3)) * levels[:, None]).sum(-2)  # (N, H, W, 3)
    return rgb.to(torch.uint8).permute(0, 3, 1, 2)


def _image_shape(values: int) -> str:
    """The view a flattened image of ``values`` most likely had: -1, C, H, W of a square grey or
    colour image (784: -1, 1, 28, 28; 3072: -1, 3, 32, 32), else MNIST's."""
    for channels in (1, 3):
        side = math.isqrt(values // channels)
        if channels * side * side == values and side >= 8:  # not 3 numbers as one colour pixel
            return f"-1, {channels}, {side}, {side}"
    return "-1, 1, 28, 28"


def _binary(scores: torch.Tensor) -> torch.Tensor:
    """A binary classifier's class per image, on the device: probabilities (all in [0, 1], as
    after a sigmoid) above 0.5, else logits (BCEWithLogitsLoss's) above 0."""
    probabilities = (scores.min() >= 0) & (scores.max() <= 1)
    return torch.where(probabilities, scores > 0.5, scores > 0).long()


def _rows(source: Any, count: int) -> torch.Tensor | None:
    """The first ``count`` rows of a 2-d floating-point or bool tensor of more than one column (a
    copy on its device), else None."""
    if isinstance(source, torch.Tensor) and source.dim() == 2 and source.shape[1] > 1 and \
            source.shape[0] >= count and (source.is_floating_point() or source.dtype is torch.bool):
        return source[:count].detach().clone()
    return None


def _output_names(outputs: Any) -> list[str] | None:
    """The names of the parts of a model's dict, namedtuple or dataclass of outputs (Hugging
    Face's ModelOutput is a dict), else None."""
    if isinstance(outputs, Mapping):
        return list(outputs)
    if hasattr(outputs, "_fields"):
        return list(outputs._fields)
    if dataclasses.is_dataclass(outputs) and not isinstance(outputs, type):
        return [field.name for field in dataclasses.fields(outputs)]
    return None


def _masks(targets: Any, shape: torch.Size) -> bool:
    """Whether ``targets`` are a segmentation's masks for images of ``shape`` (N, [C,] H, W):
    integer or bool maps (N, H, W) of the images' height and width."""
    return isinstance(targets, torch.Tensor) and targets.dim() == 3 and not targets.is_floating_point() and \
        targets.shape[0] >= shape[0] and tuple(targets.shape[1:]) == tuple(shape[-2:])


def _label_maps(images: torch.Tensor) -> bool:
    """Whether ``images`` (N, H, W) are maps of class indices (a segmentation's argmax, its
    masks): integers that are not an image's bytes (uint8) or a mask's bools."""
    return images.dim() == 3 and not images.is_floating_point() and not images.is_complex() and \
        images.dtype not in _IMAGE_INTEGERS


def _views(parts: Sequence[Any]) -> bool:
    """Whether ``parts`` are views of one batch: two or more NCHW batches of one size, channels
    and dtype (crops of their own height and width too: multi-crop)."""
    first = parts[0] if parts else None
    return len(parts) > 1 and isinstance(first, torch.Tensor) and first.dim() == 4 and all(
        isinstance(p, torch.Tensor) and p.dim() == 4 and p.shape[:2] == first.shape[:2] and p.dtype == first.dtype
        for p in parts)


_IMAGE_INTEGERS = (torch.uint8, torch.bool)  # the integer dtypes of images; others hold labels or token ids


def _one_target_each(targets: Any, shape: torch.Size) -> bool:
    """Whether ``targets`` hold a value of several numbers (a regression's field) for each of
    ``shape[0]`` rows, not a mask of an image of ``shape``."""
    return isinstance(targets, torch.Tensor) and targets.dim() >= 2 and targets.shape[0] == shape[0] and \
        targets.shape != shape


def _shares_batch(state: LoopState, source: str, count: int) -> bool:
    """Whether another of the step's inputs, targets and outputs is a tensor of ``count`` first."""
    return any(isinstance(other := getattr(state, name), torch.Tensor) and other.dim() >= 1
               and other.shape[0] == count for name in ("inputs", "targets", "outputs") if name != source)


def _one_label_each(targets: Any, count: int) -> bool:
    if _labels(targets, count) is None:
        return False
    try:
        return len(targets) == count
    except TypeError:  # one label: an int, a 0-d tensor
        return count == 1


def _labels(source: Any, count: int) -> list[Any] | None:
    """The first ``count`` labels, if ``source`` holds one label per image."""
    if count == 1 and isinstance(source, (str, numbers.Number)):  # one image, its label
        return [source]
    if type(source).__module__ == "numpy" and getattr(source, "ndim", None) in (0, 1, 2):  # labels as an array
        source = torch.as_tensor(source)
    if isinstance(source, torch.Tensor):
        if source.dim() == 0 and count == 1:
            source = source.reshape(1)
        if source.dim() == 2 and source.shape[1] == 1:
            source = source[:, 0]
        if source.dim() != 1 or source.shape[0] < count:
            return None
        return source[:count].detach().clone()  # read by the sink, not here
    if isinstance(source, (list, tuple)) and len(source) >= count and all(
            isinstance(v, (str, numbers.Number)) for v in source[:count]):  # not a detector's dicts of boxes
        return list(source[:count])
    return None
