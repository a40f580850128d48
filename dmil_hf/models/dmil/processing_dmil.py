"""DMIL processor: one tokenizer, image processor and audio feature extractor (any subset) behind one call that
returns a single flat batch for [`DMILForMultimodalClassification`]. Media decoding lives in `media_dmil.py`, the
Trainer's collator in `collator_dmil.py`.

This module is copied next to the model files when a processor is saved with remote code, so it imports only the
standard library, numpy, torch and transformers at module level; PIL and soundfile are imported where they are
needed, inside `try` blocks, which transformers' remote-code import check skips.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import numpy as np
import torch
import transformers
from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .media_dmil import (  # noqa: F401  (resample_audio is public here too)
    _as_batch,
    _check_audio,
    _check_features,
    _check_image,
    _check_text,
    _check_video,
    _sample_frames,
    _tensor_to_numpy,
    resample_audio,
)
from .modalities_dmil import KINDS, LEGACY_MODALITIES, Modality, input_names, pop_prefixed

# The three-slot modalities' processor attributes, in the order of the model's `modality_mask` columns.
SUB_PROCESSORS = {"text": "tokenizer", "vision": "image_processor", "audio": "feature_extractor"}
# The files a saved processor leaves (its own config, or one of a sub-processor's): a folder with none holds none.
SAVED_PROCESSOR_FILES = ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json")
# The processor arguments of the three-slot modalities (the names transformers' processors use); every modality can
# also be given by its name.
MODALITY_ARGUMENTS = {"text": "text", "vision": "images", "audio": "audio"}
# Text keys the model's forward accepts; any other key a tokenizer emits is dropped.
TEXT_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# The audio mask is renamed so that it never overwrites the tokenizer's `attention_mask` in the flat batch.
AUDIO_MASK_NAME = "audio_attention_mask"
# Text length when neither the tokenizer nor the text backbone gives one: the BERT/RoBERTa families' 512.
DEFAULT_TEXT_MAX_LENGTH = 512
# A tokenizer saved without a length limit gets transformers' "no limit" sentinel (1e20 or 1e30) as model_max_length.
_NO_TOKENIZER_LIMIT = int(1e20)
# Text families whose position ids start after the padding index (RoBERTa's `create_position_ids_from_input_ids`):
# the first `pad_token_id + 1` rows of their position embeddings are never used by a token.
_PADDING_OFFSET_FAMILIES = frozenset({
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "data2vec-text", "longformer",
})

logger = logging.getLogger(__name__)


# A transformers video processor's file (VideoMAE folders saved with a VideoMAEVideoProcessor have only this one).
VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"
# Video processor settings an image processor has no use for (DMIL samples a clip's frames itself: `num_frames`).
_VIDEO_ONLY_KEYS = frozenset({"video_processor_type", "processor_class", "do_sample_frames", "num_frames", "fps",
                              "return_metadata", "video_metadata"})


def load_image_processor(pretrained_model_name_or_path, config_dict: dict | None = None, **kwargs: Any):
    """`AutoImageProcessor.from_pretrained`, or, where transformers needs torchvision for the Auto class and it is not
    installed (5.17 has no PIL fallback there), the PIL class named by the saved config's `image_processor_type`.

    A folder with a video processor and no image processor (a VideoMAE saved with its `VideoMAEVideoProcessor`) gets
    the image processor of the same family built from the video processor's settings (`VideoMAEImageProcessor`,
    which reads whole clips too): transformers' video processors need torchvision, and DMIL samples frames itself.

    `config_dict` is the image processor's saved config when the caller already has it (a DMILProcessor keeps it
    nested in `processor_config.json`).
    """
    try:
        return _load_saved_image_processor(pretrained_model_name_or_path, config_dict, **kwargs)
    except OSError:
        video = _video_processor_dict(pretrained_model_name_or_path, kwargs)
        if video is None:
            raise
        name = video.get("video_processor_type") or ""
        settings = {k: v for k, v in video.items() if k not in _VIDEO_ONLY_KEYS}
        processor = _image_processor_of_family(name.removesuffix("VideoProcessor") + "ImageProcessor", settings)
        if processor is None:
            raise ValueError(
                f"{os.fspath(pretrained_model_name_or_path)!r} has a video processor ({name or 'of no named class'}) "
                "and no image processor, and transformers has no image processor of its family to read the frames: "
                "give the DMILProcessor an image processor (image_processor=...)"
            ) from None
        return processor


def _load_saved_image_processor(pretrained_model_name_or_path, config_dict: dict | None = None, **kwargs: Any):
    try:
        return AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
    except ImportError:
        if config_dict is None:
            from transformers import ImageProcessingMixin

            config_dict, _ = ImageProcessingMixin.get_image_processor_dict(pretrained_model_name_or_path, **kwargs)
        processor = _image_processor_of_family(config_dict.get("image_processor_type") or "", config_dict)
        if processor is None:
            raise
        return processor


def _image_processor_of_family(name: str, config_dict: dict):
    """The PIL (else the default) image processor class `name` names, built from `config_dict`; None if none can be."""
    base = name.removesuffix("Fast").removesuffix("Pil")
    for candidate in (f"{base}Pil", base):
        cls = getattr(transformers, candidate, None) if candidate else None
        if cls is not None:
            try:
                return cls.from_dict({k: v for k, v in config_dict.items() if k != "image_processor_type"})
            except ImportError:
                continue
    return None


def _video_processor_dict(pretrained_model_name_or_path, kwargs: dict[str, Any]) -> dict | None:
    """The saved video processor config of a folder or Hub repo, None when it has none."""
    import json

    from transformers.utils import cached_file

    file_kwargs = {k: v for k, v in kwargs.items() if k in ("subfolder", "revision", "cache_dir", "token",
                                                             "local_files_only")}
    try:
        resolved = cached_file(
            pretrained_model_name_or_path, VIDEO_PROCESSOR_FILE, _raise_exceptions_for_missing_entries=False,
            **file_kwargs,
        )
    except OSError:
        return None
    if resolved is None:
        return None
    with open(resolved) as f:
        return json.load(f)


def _takes_videos(image_processor: Any) -> bool:
    """Whether an image processor reads whole clips: VideoMAE's image processor and transformers' video processors
    name their input `videos`, and read a list of frames as one clip, not as a batch of images."""
    try:
        parameters = list(inspect.signature(image_processor.preprocess).parameters)
    except (AttributeError, TypeError, ValueError):
        return False
    return bool(parameters) and parameters[0] == "videos"


def _as_array(value: Any) -> np.ndarray:
    """An image processor's output (numpy array or torch tensor) as a numpy array."""
    return _tensor_to_numpy(value) if isinstance(value, torch.Tensor) else np.asarray(value)


def _size_of(image: Any) -> str:
    """An input image's size as "HxW" (a PIL image or an (H, W, C) array)."""
    if hasattr(image, "height") and hasattr(image, "width"):
        return f"{image.height}x{image.width}"
    return "x".join(str(n) for n in np.shape(image)[:2])


def _check_one_size(records: list[tuple[str, Any, np.ndarray]], what: str) -> None:
    """Every (name, input image, processed pixels) of a batch must come out of the image processor at one shape, or
    the batch cannot be one tensor: the first that differs is named, with its input size and the first one's."""
    name0, image0, pixels0 = records[0]
    for name, image, pixels in records[1:]:
        if pixels.shape != pixels0.shape:
            raise ValueError(
                f"{name.split(' ')[0]}: {what} have different sizes after the image processor ({name}: "
                f"{_size_of(image)} pixels -> {tuple(pixels.shape)}; {name0}: {_size_of(image0)} -> "
                f"{tuple(pixels0.shape)}), so they cannot form one batch: resize them to one size first, or let the "
                "image processor resize them (do_resize=True with a size)"
            )


# ----------------------------------------------------------------------------------------------------------------
# The processor
# ----------------------------------------------------------------------------------------------------------------


class _PresentSubProcessors:
    """`get_attributes` that lists every sub-processor slot on the class but only the filled slots on an instance.

    `ProcessorMixin` calls `cls.get_attributes()` where it needs the slots (loading, `to_dict`) and
    `self.get_attributes()` where it calls a method on each sub-processor (`save_pretrained`, `__repr__`); answering
    the latter with the filled slots only is what lets a processor leave a slot empty (None) and still save.
    """

    def __get__(self, instance: Any, owner: type):
        if instance is None:
            return lambda: list(SUB_PROCESSORS.values())
        return lambda: [slot for slot in SUB_PROCESSORS.values() if getattr(instance, slot, None) is not None]


class DMILProcessor(ProcessorMixin):
    r"""Processor of [`DMILForMultimodalClassification`]: a tokenizer, an image processor and an audio feature
    extractor, any of which may be left out (a text+vision model has no feature extractor).

    Calling it returns one flat [`BatchFeature`] with the keys of the model's forward: `input_ids`, `attention_mask`
    (`token_type_ids`) for text, `pixel_values` for images, the extractor's `input_values` or `input_features` for
    audio with its mask renamed `audio_attention_mask` (so it never overwrites the text `attention_mask`), and
    `modality_mask` when a sample lacks a modality. Each modality is padded on its own.

    Missing modalities: give `None` in a sample's position (`text=["a cat", None]`). The sample gets a neutral
    placeholder (empty text, a black image, silence of the batch's length) so that the batch stays rectangular,
    and `modality_mask` (`(batch, num_modalities)`, bool, columns in text, vision, audio order over the processor's
    modalities) is False there; the model then ignores the placeholder. A modality absent from the whole batch has
    no keys at all. `modality_mask` is returned whenever some sample lacks one of the processor's modalities (or
    always with `return_modality_mask=True`).

    Missing text: None, "" and whitespace-only strings are all a missing text (an empty string carries nothing
    for the model to read).

    Images: files, PIL images of any mode and arrays of 1 to 4 channels all become 8-bit RGB the same way before the
    image processor. Pixel values follow one rule: uint8 arrays are 0..255, float arrays (and float tensors) are
    taken as [0, 1] (other values are an error, not a guess), uint16 arrays and 16-bit images (PNG mode "I;16"/"I")
    are 0..65535, bool arrays are black/white, other integer arrays must hold 0..255.

    Text length: texts are truncated to the smallest known limit: the tokenizer's `model_max_length` (unless it is
    transformers' "no limit" sentinel) and `text_max_length` (the text backbone's positions); 512 when neither is
    known. `text_kwargs={"max_length": ...}` overrides it.

    Args:
        tokenizer ([`PreTrainedTokenizerBase`], *optional*): the text backbone's tokenizer.
        image_processor ([`BaseImageProcessor`], *optional*): the vision backbone's image processor.
        feature_extractor ([`SequenceFeatureExtractor`], *optional*): the audio backbone's feature extractor.
        text_max_length (`int`, *optional*): tokens the text backbone takes per text (see
            `DMILProcessor.backbone_text_length(model.config.text_config)`); saved with the processor.

    Saving writes the tokenizer files and one `processor_config.json` holding the image and audio configs under
    their own keys (an empty slot is saved as `null`), so the two never overwrite each other, and
    `AutoProcessor.from_pretrained` restores the same subset.

    Example:

    ```python
    >>> import numpy as np
    >>> from transformers import ViTImageProcessorPil, Wav2Vec2FeatureExtractor
    >>> from dmil_hf import DMILProcessor
    >>> processor = DMILProcessor(image_processor=ViTImageProcessorPil(size={"height": 16, "width": 16}),
    ...                           feature_extractor=Wav2Vec2FeatureExtractor(return_attention_mask=True))
    >>> batch = processor(images=[np.zeros((20, 20, 3), np.uint8), None],
    ...                   audio=[np.zeros(1600, np.float32), np.zeros(800, np.float32)])
    >>> sorted(batch.keys())
    ['audio_attention_mask', 'input_values', 'modality_mask', 'pixel_values']
    >>> batch["modality_mask"].tolist()
    [[True, True], [False, True]]
    ```
    """

    get_attributes = _PresentSubProcessors()

    def __init__(
        self, tokenizer=None, image_processor=None, feature_extractor=None, text_max_length: int | None = None,
        modality_table: list[dict[str, Any]] | None = None,
    ):
        given = {"tokenizer": tokenizer, "image_processor": image_processor, "feature_extractor": feature_extractor}
        if modality_table is None:
            if all(value is None for value in given.values()):
                raise ValueError("DMILProcessor needs at least one of tokenizer, image_processor and feature_extractor")
            rows = [Modality(m, LEGACY_MODALITIES[m]) for m, slot in SUB_PROCESSORS.items() if given[slot] is not None]
        else:
            rows = [row if isinstance(row, Modality) else Modality(**row) for row in modality_table]
            for row in rows:
                slot = KINDS[row.kind].processor_slot
                if slot is not None and given[slot] is None:
                    raise ValueError(
                        f"modality {row.name!r} ({row.kind}) needs a {slot.replace('_', ' ')}, which this "
                        "DMILProcessor was not given"
                    )
        if text_max_length is not None and (
            isinstance(text_max_length, bool) or not isinstance(text_max_length, int) or text_max_length < 1
        ):
            raise ValueError(f"text_max_length must be a positive int or None, got {text_max_length!r}")
        # Not sub-processors: ProcessorMixin saves them (__init__ arguments) in processor_config.json.
        self.text_max_length = text_max_length
        self.modality_table = [row.to_row() for row in rows]
        self._rows = rows
        # Filling the slots first makes the instance's get_attributes() list exactly the given sub-processors, which
        # is what ProcessorMixin.__init__ then checks (class of each) and sets.
        for attribute, value in given.items():
            setattr(self, attribute, value)
        super().__init__(**{attribute: value for attribute, value in given.items() if value is not None})

    @classmethod
    def for_model(cls, config: Any, tokenizer=None, image_processor=None, feature_extractor=None) -> "DMILProcessor":
        """The processor of a model's modality table (`config.modality_table`) with the given sub-processors, and
        the text backbone's length limit."""
        text = next((m for m in config.modality_specs if m.kind == "text"), None)
        return cls(
            tokenizer=tokenizer, image_processor=image_processor, feature_extractor=feature_extractor,
            text_max_length=cls.backbone_text_length(text.backbone) if text is not None else None,
            modality_table=[m.to_row() for m in config.modality_specs],
        )

    @classmethod
    def from_backbones_pretrained(
        cls,
        text: str | None = None,
        vision: str | None = None,
        audio: str | None = None,
        modality_table: list[Modality] | None = None,
        **kwargs: Any,
    ) -> "DMILProcessor":
        """The processor matching `DMILForMultimodalClassification.from_backbones_pretrained` with the same backbones:
        each backbone's own tokenizer, image processor or feature extractor, loaded from the same Hub id or path.

        Give the backbones as `text=`, `vision=`, `audio=` or as `modality_table` rows whose `backbone` is the path (a
        row with a config instead of a path has no processor files: give that one's sub-processor to `for_model`).
        Two modalities of one kind share the sub-processor of the first of them (a video's frames go through the
        image processor). Keyword arguments prefixed with a modality's name and `_` (`text_revision="main"`) go to
        that sub-processor's `from_pretrained`; `text_max_length` is taken from the text backbone's config.

        Example:

        ```python
        >>> from dmil_hf import DMILProcessor
        >>> from dmil_hf.testing_utils import save_tiny_backbones
        >>> paths = save_tiny_backbones("/tmp/dmil-doc-backbones")
        >>> DMILProcessor.from_backbones_pretrained(text=paths["text"], audio=paths["audio"]).modalities
        ['text', 'audio']
        ```
        """
        from transformers import AutoConfig

        slots = {"text": text, "vision": vision, "audio": audio}
        if modality_table is None:
            rows = [Modality(m, LEGACY_MODALITIES[m], path) for m, path in slots.items() if path is not None]
        elif any(path is not None for path in slots.values()):
            raise ValueError("give the backbones either as text=/vision=/audio= or as modality_table, not both")
        else:
            rows = list(modality_table)
        kwargs = dict(kwargs)
        options = pop_prefixed(kwargs, [row.name for row in rows])
        stray = sorted(kwargs)
        if stray:
            raise TypeError(f"unexpected argument(s) {stray}: prefix a sub-processor's arguments with its modality's name")
        loaders = {"tokenizer": AutoTokenizer.from_pretrained, "image_processor": load_image_processor,
                   "feature_extractor": AutoFeatureExtractor.from_pretrained}
        subs: dict[str, Any] = {}
        text_max_length = None
        # A video backbone of a fixed clip length (VideoMAE) sets the row's num_frames, as it does in the model's
        # config, so that the processor samples the clips the backbone takes.
        rows = [cls._with_clip_length(row) for row in rows]
        for row in rows:
            slot = KINDS[row.kind].processor_slot
            if slot is None or slot in subs:
                continue
            if not isinstance(row.backbone, (str, os.PathLike)):
                raise ValueError(
                    f"modality {row.name!r} has no path to load its {slot.replace('_', ' ')} from; build the processor "
                    "with DMILProcessor.for_model(config, ...) instead"
                )
            subs[slot] = loaders[slot](row.backbone, **options[row.name])
            if row.kind == "text":
                text_max_length = cls.backbone_text_length(AutoConfig.from_pretrained(row.backbone))
        return cls(**subs, text_max_length=text_max_length, modality_table=[row.to_row() for row in rows])

    @staticmethod
    def _with_clip_length(row: Modality) -> Modality:
        if row.kind != "video" or not isinstance(row.backbone, (str, os.PathLike)):
            return row
        from dataclasses import replace

        from transformers import AutoConfig

        from .configuration_dmil import _clip_length

        return replace(row, num_frames=_clip_length(row, AutoConfig.from_pretrained(row.backbone)))

    @property
    def modalities(self) -> list[str]:
        """The modalities this processor handles, in the model's order (its modality table's)."""
        return [row.name for row in self._rows]

    @property
    def model_input_names(self) -> list[str]:
        names = []
        for row in self._rows:
            row_names = self._names(row)
            if row.kind == "text":
                produced = [n for n in self.tokenizer.model_input_names if n in TEXT_INPUT_NAMES]
                prefix = "" if row.is_legacy_slot else f"{row.name}_"
                names += [prefix + n for n in produced]
            else:
                names += [row_names.main, *([row_names.mask] if row_names.mask else [])]
        return names + ["modality_mask"]

    @staticmethod
    def backbone_text_length(text_config: Any) -> int | None:
        """Tokens a text backbone takes per text: its `max_position_embeddings`, less the positions RoBERTa-style
        backbones keep before the first token (`pad_token_id + 1`); None when the config does not say."""
        positions = getattr(text_config, "max_position_embeddings", None)
        if not isinstance(positions, int) or positions < 1:
            return None
        if getattr(text_config, "model_type", None) in _PADDING_OFFSET_FAMILIES:
            positions -= (getattr(text_config, "pad_token_id", None) or 0) + 1
        return positions

    def text_length_limit(self, backbone_length: int | None = None) -> int:
        """The most tokens a text is given: the smallest of the tokenizer's `model_max_length` (when it is a real
        limit), `text_max_length` and `backbone_length`; `DEFAULT_TEXT_MAX_LENGTH` (512) when none is known."""
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        limits = [
            limit for limit in (tokenizer_limit, self.text_max_length, backbone_length)
            if isinstance(limit, int) and 0 < limit < _NO_TOKENIZER_LIMIT
        ]
        return min(limits) if limits else DEFAULT_TEXT_MAX_LENGTH

    @property
    def _audio_input_name(self) -> str:
        names = getattr(self.feature_extractor, "model_input_names", None) or ["input_values"]
        return names[0]

    # ------------------------------------------------------------------ saving and loading

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        # An empty slot is written as null (the tokenizer too, which ProcessorMixin otherwise leaves out), so that
        # loading knows not to look for it.
        for attribute in SUB_PROCESSORS.values():
            if getattr(self, attribute, None) is None:
                output[attribute] = None
        return output

    @classmethod
    def _load_sub_processors(cls, pretrained_model_name_or_path, processor_dict: dict, kwargs: dict) -> dict[str, Any]:
        """Each sub-processor slot loaded, for every supported transformers release: one given by the caller is
        kept, one saved empty (`null`) stays None (ProcessorMixin would look for it with its Auto class and fail),
        the image processor goes through `load_image_processor` (a PIL class where the Auto class needs
        torchvision). Consumes `subfolder` and the given sub-processors from `kwargs`."""
        subfolder = kwargs.pop("subfolder", "")
        folder = os.path.join(os.fspath(pretrained_model_name_or_path), subfolder) if subfolder else \
            os.fspath(pretrained_model_name_or_path)
        if not processor_dict and os.path.isdir(folder) and not any(
            os.path.isfile(os.path.join(folder, name)) for name in SAVED_PROCESSOR_FILES
        ):
            # Each sub-processor's Auto class would fail in its own words (a tokenizer it cannot build from the
            # backbone config): say what is missing instead. A model saved on its own has no processor.
            raise OSError(
                f"{folder} holds no DMILProcessor (none of {', '.join(SAVED_PROCESSOR_FILES)}): a model saved with "
                "save_pretrained has no processor of its own. Save one into the folder (processor.save_pretrained("
                "folder), as save_for_pipeline and DMILTrainer do), or pass it: pipeline(..., processor=processor)."
            )
        loaded = {}
        for attribute in SUB_PROCESSORS.values():
            given = kwargs.pop(attribute, None)
            if given is not None or (attribute in processor_dict and processor_dict[attribute] is None):
                loaded[attribute] = given
            elif attribute == "image_processor":
                config_dict = processor_dict.get(attribute)
                loaded[attribute] = load_image_processor(
                    pretrained_model_name_or_path, config_dict=config_dict if isinstance(config_dict, dict) else None,
                    subfolder=subfolder, **kwargs,
                )
            else:
                loader = {"tokenizer": AutoTokenizer, "feature_extractor": AutoFeatureExtractor}[attribute]
                loaded[attribute] = loader.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        return loaded

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # transformers < 5.25 loads the sub-processors here, positionally in get_attributes() order.
        loaded = cls._load_sub_processors(pretrained_model_name_or_path, processor_dict or {}, kwargs)
        return [loaded[attribute] for attribute in SUB_PROCESSORS.values()]

    @classmethod
    def _resolve_subprocessors(cls, pretrained_model_name_or_path, processor_dict, **kwargs):
        # transformers >= 5.25 loads them here and hands (processor_dict, kwargs) to from_dict; of the kwargs only
        # __init__ arguments (e.g. text_max_length=) are meant for the processor, the rest were for the loaders.
        kwargs.pop("return_unused_kwargs", None)
        processor_dict = {**processor_dict, **cls._load_sub_processors(pretrained_model_name_or_path, processor_dict, kwargs)}
        init_arguments = set(inspect.signature(cls.__init__).parameters) - {"self"}
        return processor_dict, {key: value for key, value in kwargs.items() if key in init_arguments}

    # ------------------------------------------------------------------ processing

    def __call__(
        self,
        text: str | list[str | None] | None = None,
        images: Any = None,
        audio: Any = None,
        sampling_rate: int | None = None,
        return_tensors: str | None = "pt",
        return_modality_mask: bool | None = None,
        text_kwargs: dict[str, Any] | None = None,
        images_kwargs: dict[str, Any] | None = None,
        audio_kwargs: dict[str, Any] | None = None,
        **modalities: Any,
    ) -> BatchFeature:
        """Process a sample or a batch into the model's inputs.

        Args:
            text: a string, or a list with a string (or None) per sample; "" and whitespace-only strings count as
                a missing text.
            images: a PIL image (any mode), numpy array ((H, W), HWC or CHW, 1 to 4 channels; uint8 0..255,
                float [0, 1], uint16 0..65535), torch tensor, file path or bytes, a `datasets.Image(decode=False)`
                value `{"bytes", "path"}`, or a list of those (None for a missing image).
            audio: a 1-D waveform, a `(waveform, sampling_rate)` tuple, a `{"array", "sampling_rate"}` dict, a file
                path or its bytes, a `datasets.Audio(decode=False)` value `{"bytes", "path"}` (files decoded with
                soundfile, channels averaged) or a torchcodec AudioDecoder, or a list of those (None for a missing
                clip). Audio at another rate than the feature extractor's is resampled. Integer samples are PCM,
                scaled to [-1, 1) by one rule (`media_dmil.pcm_to_float`, libsndfile's): int16 / int32 arrays by
                their width, lists of ints (and int64 arrays) as 16-bit PCM.
            **modalities: any modality by its name (`rgb=`, `flow=`, `facs=`; `text=`, `vision=` and `audio=` for the
                three-slot ones). A video is a list of frames (anything `images` takes), an array (frames, H, W, C),
                a tensor (frames, C, H, W), a video file path or its bytes, a `datasets.Video(decode=False)` value
                (files decoded with PyAV: `pip install av`) or a torchcodec VideoDecoder; a batch is a list of
                those. A video row with `num_frames` keeps that many frames, spread over the clip. Features are
                arrays (steps, dim) or (dim,), a list of them per batch. `text`, `images` and `audio` go to the
                modality of that kind (its three-slot name, or the only one of its kind).
            sampling_rate: rate of the bare waveforms (those without their own rate), a positive integer (a float
                with a whole value is taken as that integer); default: the extractor's.
            return_tensors: `"pt"` (default), `"np"` or None.
            return_modality_mask: True to always return `modality_mask`, False never; by default only when some
                sample lacks a modality.
            text_kwargs, images_kwargs, audio_kwargs: extra arguments of the tokenizer, image processor (images and
                video frames) and feature extractor (they override the defaults: text padding to the longest and
                truncation to `text_length_limit()`, audio padding to the longest where the extractor does not pad
                to a fixed length itself).
        """
        given = self._by_modality({"text": text, "images": images, "audio": audio}, modalities)
        rows = {row.name: row for row in self._rows}
        batches = {m: _as_batch(v, rows[m].kind) for m, v in given.items()}
        if not batches:
            names = ", ".join(self._argument_names())
            raise ValueError(f"no input given: pass at least one of {names}")
        sizes = {self._argument_of(rows[m]): len(items) for m, items in batches.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"the inputs disagree on the batch size: {sizes} (use None for a sample's missing modality)"
            )
        batch_size = next(iter(sizes.values()))
        if batch_size == 0:
            raise ValueError("empty batch: the inputs are empty lists")

        checked = {}
        for modality, items in batches.items():
            row, argument = rows[modality], self._argument_of(rows[modality])
            if row.kind == "text":
                checked[modality] = [_check_text(x, f"{argument}[{i}]") for i, x in enumerate(items)]
            elif row.kind == "image":
                checked[modality] = [_check_image(x, f"{argument}[{i}]") for i, x in enumerate(items)]
            elif row.kind == "video":
                checked[modality] = [_check_video(x, f"{argument}[{i}]") for i, x in enumerate(items)]
            elif row.kind == "features":
                checked[modality] = [_check_features(x, f"{argument}[{i}]") for i, x in enumerate(items)]
            else:
                target = int(self.feature_extractor.sampling_rate)
                checked[modality] = [
                    _check_audio(x, f"{argument}[{i}]", sampling_rate, target) for i, x in enumerate(items)
                ]
        present = {m: [x is not None for x in items] for m, items in checked.items()}
        for i in range(batch_size):
            if not any(present[m][i] for m in present):
                raise ValueError(
                    f"sample {i} has no input in any modality ({', '.join(sizes)} "
                    f"{'is' if len(sizes) == 1 else 'are'} None or empty)"
                )

        data: dict[str, Any] = {}
        kwargs = {"text": text_kwargs, "image": images_kwargs, "video": images_kwargs, "audio": audio_kwargs}
        for modality, items in checked.items():
            if not any(present[modality]):
                continue  # absent from the whole batch: no keys, the model skips the backbone
            row = rows[modality]
            process = {
                "text": self._process_text, "image": self._process_images, "video": self._process_video,
                "audio": self._process_audio, "features": self._process_features,
            }[row.kind]
            outputs = process(row, items, return_tensors, kwargs.get(row.kind))
            data.update(outputs)

        mask = [[present.get(m, [False] * batch_size)[i] for m in self.modalities] for i in range(batch_size)]
        if return_modality_mask or (return_modality_mask is None and not all(all(row) for row in mask)):
            data["modality_mask"] = np.array(mask, dtype=bool) if return_tensors is not None else mask
        return BatchFeature(data, tensor_type=return_tensors)

    # ------------------------------------------------------------------ arguments

    def _argument_of(self, row: Modality) -> str:
        """The argument name a modality is reported under: the three-slot argument (unless another modality has it
        as its name), else its name."""
        alias = MODALITY_ARGUMENTS.get(row.name)
        return alias if row.is_legacy_slot and (alias == row.name or alias not in self.modalities) else row.name

    def _argument_names(self) -> list[str]:
        return [self._argument_of(row) for row in self._rows]

    def _by_modality(self, legacy: dict[str, Any], named: dict[str, Any]) -> dict[str, Any]:
        """The given inputs keyed by modality name: `text=`/`images=`/`audio=` go to the modality of that name when
        there is one, whatever its kind (a modality's own name always wins over a three-slot alias), else to the
        modality of that kind (its three-slot name, or the only one of its kind); any other keyword must name a
        modality."""
        unknown = sorted(set(named) - set(self.modalities))
        if unknown:
            raise TypeError(
                f"DMILProcessor got unexpected argument(s) {unknown}; its modalities are {self.modalities} "
                f"(arguments: {', '.join(self._argument_names())})"
            )
        given = {m: v for m, v in named.items() if v is not None}
        for argument, value in legacy.items():
            if value is None:
                continue
            if argument in self.modalities:  # a `text` features row, an `audio` video row: the name is theirs
                given[argument] = value
                continue
            slot = next(m for m, a in MODALITY_ARGUMENTS.items() if a == argument)
            kind = LEGACY_MODALITIES[slot]
            candidates = [row.name for row in self._rows if row.kind == kind]
            target = slot if slot in candidates else (candidates[0] if len(candidates) == 1 else None)
            if target is None:
                what = SUB_PROCESSORS[slot].replace("_", " ")
                raise ValueError(
                    f"{argument} was given, but this DMILProcessor has "
                    + (f"no {what} (its modalities: {', '.join(self.modalities)})" if not candidates else
                       f"several {kind} modalities ({', '.join(candidates)}): pass each by its name")
                )
            if target in given:
                raise ValueError(f"the {target} modality was given twice (as {argument}= and {target}=)")
            given[target] = value
        return given

    # ------------------------------------------------------------------ one modality

    def _names(self, row: Modality) -> Any:
        return input_names(row, self._audio_input_name if row.kind == "audio" else None)

    def _process_text(self, row: Modality, items: list[str | None], return_tensors, kwargs) -> dict[str, Any]:
        # Truncation needs a length: a tokenizer saved without model_max_length would otherwise let any length
        # through, and the model refuses texts longer than its position embeddings.
        kwargs = {"padding": True, "truncation": True, "max_length": self.text_length_limit(), **(kwargs or {})}
        encoded = self.tokenizer(["" if x is None else x for x in items], return_tensors=return_tensors, **kwargs)
        prefix = "" if row.is_legacy_slot else f"{row.name}_"
        return {prefix + k: v for k, v in encoded.items() if k in TEXT_INPUT_NAMES}

    def _process_images(self, row: Modality, items: list, return_tensors, kwargs) -> dict[str, Any]:
        first = next(x for x in items if x is not None)
        placeholder = np.zeros_like(np.asarray(first))  # a black image shaped like the batch's first one
        images = [placeholder if x is None else x for x in items]
        pixels = self._pixels(images, kwargs)
        argument = self._argument_of(row)
        _check_one_size([(f"{argument}[{i}]", image, p) for i, (image, p) in enumerate(zip(images, pixels))], "images")
        return {self._names(row).main: np.stack(pixels)}

    def _process_video(self, row: Modality, clips: list, return_tensors, kwargs) -> dict[str, Any]:
        """Frames of every clip through the image processor, as (batch, frames, C, H, W) zero-padded to the longest
        clip (or `num_frames`) with a (batch, frames) mask; a missing clip is all padding.

        An image processor takes the frames as images; a processor of whole clips (VideoMAE's image processor, a
        transformers video processor: its `preprocess` reads `videos`) takes each clip as one video, since it would
        read a list of frames as a single clip."""
        clips = [None if clip is None else _sample_frames(clip, row.num_frames) for clip in clips]
        argument = self._argument_of(row)
        present = [(i, clip) for i, clip in enumerate(clips) if clip is not None]
        if _takes_videos(self.image_processor):
            encoded = self.image_processor([clip for _, clip in present], return_tensors=None, **(kwargs or {}))
            per_clip = encoded["pixel_values"] if "pixel_values" in encoded else encoded["pixel_values_videos"]
            arrays = [_as_array(np.stack([_as_array(f) for f in x]) if isinstance(x, (list, tuple)) else x)
                      for x in per_clip]
            for (i, clip), array in zip(present, arrays):
                if array.ndim != 4 or len(array) != len(clip):
                    raise ValueError(
                        f"{argument}[{i}]: {type(self.image_processor).__name__} returned shape {array.shape} for a clip "
                        f"of {len(clip)} frames; DMIL needs (frames, channels, height, width) with every frame kept "
                        "(turn off the processor's own frame sampling, do_sample_frames=False; num_frames samples them)"
                    )
            frames = [pixel for array in arrays for pixel in array]
        else:
            frames = self._pixels([frame for _, clip in present for frame in clip], kwargs)
        inputs = [(f"{argument}[{i}] frame {t}", frame) for i, clip in present for t, frame in enumerate(clip)]
        _check_one_size([(name, frame, pixel) for (name, frame), pixel in zip(inputs, frames)], "frames")
        length = row.num_frames or max(len(clip) for _, clip in present)
        video = np.zeros((len(clips), length, *frames[0].shape), dtype=frames[0].dtype)
        mask = np.zeros((len(clips), length), dtype=np.int64)
        start = 0
        for i, clip in present:
            video[i, : len(clip)] = np.stack(frames[start : start + len(clip)])
            mask[i, : len(clip)] = 1
            start += len(clip)
        names = self._names(row)
        return {names.main: video, names.mask: mask}

    def _pixels(self, images: list, kwargs: dict[str, Any] | None) -> list[np.ndarray]:
        """Each image through the image processor as its own (C, H, W) array: unstacked (return_tensors=None), so
        that images the processor leaves at different sizes are reported by `_check_one_size`, not by a failed
        stacking inside transformers."""
        encoded = self.image_processor(images, return_tensors=None, **(kwargs or {}))
        return [_as_array(x) for x in encoded["pixel_values"]]

    def _process_features(self, row: Modality, items: list, return_tensors, kwargs) -> dict[str, Any]:
        """Feature sequences zero-padded to the longest, as (batch, steps, dim) with a (batch, steps) mask."""
        dims = {x.shape[1] for x in items if x is not None}
        if len(dims) > 1:
            raise ValueError(f"{row.name}: the samples' feature sizes differ ({sorted(dims)}); each step needs one size")
        dim, length = dims.pop(), max(len(x) for x in items if x is not None)
        values = np.zeros((len(items), length, dim), dtype=np.float32)
        mask = np.zeros((len(items), length), dtype=np.int64)
        for i, x in enumerate(items):
            if x is not None:
                values[i, : len(x)], mask[i, : len(x)] = x, 1
        names = self._names(row)
        return {names.main: values, names.mask: mask}

    def _process_audio(self, row: Modality, items: list[np.ndarray | None], return_tensors, kwargs) -> dict[str, Any]:
        extractor = self.feature_extractor
        # Silence as long as the longest clip, so that the placeholder never lengthens the padded batch.
        longest = max(len(x) for x in items if x is not None)
        waveforms = [np.zeros(longest, dtype=np.float32) if x is None else x for x in items]
        defaults: dict[str, Any] = {}
        padding = inspect.signature(extractor.__call__).parameters.get("padding")
        if padding is not None and padding.default is False:
            # wav2vec2-style extractors do not pad by default; extractors that pad to a fixed length (Whisper)
            # keep their own default, which their backbone needs.
            defaults["padding"] = True
        encoded = extractor(
            waveforms, sampling_rate=int(extractor.sampling_rate), return_tensors=return_tensors,
            **{**defaults, **(kwargs or {})},
        )
        main = self._audio_input_name if self._audio_input_name in encoded else next(iter(encoded))
        names = input_names(row, main)
        out = {names.main: encoded[main]}
        if encoded.get("attention_mask") is not None:
            out[names.mask] = encoded["attention_mask"]
        return out



__all__ = ["DMILProcessor", "DMILDataCollator", "resample_audio"]
