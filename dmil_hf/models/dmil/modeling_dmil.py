"""DMIL model: one encoder per row of the modality table (any AutoModel backbone, a video through an image backbone
frame by frame, or dmil_hf's feature encoder), a projection of each to Z_m, and the head of `config.paradigm`
(`heads_dmil.HEADS`: DMIL's decomposition and gate, or the joint / ensemble baselines on the same features).

`forward` reads like the paper's figure: route the inputs to their modalities (`inputs_dmil`), encode each modality,
hand the features to the head.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from .backbones_dmil import (
    POOLERS,
    TEMPORAL_POOLERS,
    BackboneSpec,
    apply_fast_paths,
    backbone_no_split_modules,
    backbone_spec,
    backbone_width,
    check_backbone_fits,
)
from .configuration_dmil import PIPELINE_ENTRY, PIPELINE_TASK, DMILConfig, _as_backbone_config, pipeline_code_file
from .feature_encoder_dmil import DMILFeatureEncoder, DMILFeatureEncoderConfig
from .heads_dmil import (  # noqa: F401  (re-exported: the method's modules, importable from the model file)
    GATE_OBJECTIVES,
    HEADS,
    REDUNDANCY_READOUTS,
    SYNERGY_FUSIONS,
    ConsistencyDecomposition,
    DiagonalGaussianHead,
    DMILHead,
    DMILOutput,
    EnsembleHead,
    GaussianLatent,
    InteractionGate,
    IntraModalDecomposition,
    JointHead,
    MLPSynergyFusion,
    PROJECTIONS,
    projected_width,
    ModalityFeatures,
    SynergyFusion,
    gaussian_kl,
    interaction_composition,
    kl_per_dim,
    masked_mean,
)
from .inputs_dmil import MAX_INPUT_MAGNITUDE, ModalityRoute, check_modality, check_tensor, fill_clip  # noqa: F401
from .modalities_dmil import LEGACY_MODALITIES, Modality, input_names, pop_prefixed
from .problem_types_dmil import PROBLEM_TYPES, SINGLE_LABEL, resolve_problem_type
from .stages_dmil import STAGES

logger = logging.getLogger(__name__)

# Encoders dmil_hf defines itself: built directly, since as Hub remote code they are not in AutoModel's registry.
LOCAL_ENCODERS = {DMILFeatureEncoderConfig.model_type: DMILFeatureEncoder}

# Checkpoints saved before the head registry kept the head's modules at the top level of the model; loading maps
# their keys under `head.` (transformers' `key_mapping`).
_LEGACY_HEAD_MODULES = (
    "intra_decomposition", "consistency_decomposition", "synergy_fusion", "component_classifiers",
    "interaction_gate", "joint_classifier", "ensemble_classifiers",
)
LEGACY_KEY_MAPPING = {rf"^{name}\.": f"head.{name}." for name in _LEGACY_HEAD_MODULES}
# The three-slot API's input names and their modality, to say which modality an unexpected input belongs to.
_THREE_SLOT_INPUTS = {
    name: slot for slot, kind in LEGACY_MODALITIES.items() for name in input_names(Modality(slot, kind)).all
}


class DMILPreTrainedModel(PreTrainedModel):
    config_class = DMILConfig
    base_model_prefix = "dmil"
    main_input_name = "input_ids"
    input_modalities = ("text", "image", "video", "audio")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    # forward returns a per-batch mean: the Trainer must scale it for gradient accumulation.
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, except that a checkpoint whose weights do not cover the model its config
        describes (a paradigm or variant changed in config.json, a head or backbone tensor missing) is an error:
        transformers would log the missing keys and initialise those modules at random. Checkpoints of the
        three-slot releases (head modules at the top level) load with their keys mapped under `head.`."""
        want_info = kwargs.pop("output_loading_info", False)
        # transformers raises a bare RuntimeError after its load report when a shape differs; we load with the
        # mismatch allowed and raise our own error below, unless the caller asked for the mismatch to be ignored.
        allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
        kwargs["key_mapping"] = {**LEGACY_KEY_MAPPING, **(kwargs.get("key_mapping") or {})}
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
            )
        except Exception as err:
            # safetensors' own errors ("incomplete metadata", "header too small") name neither the folder nor the
            # file; only on this failure path are the folder's weight files read to say which one is broken and how.
            broken = _broken_weight_files(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
            if broken:
                raise OSError(
                    f"cannot load the weights of {pretrained_model_name_or_path}: {'; '.join(broken)}. The file was "
                    "cut short (a copy or download that stopped), emptied or edited; save the model again, or delete "
                    f"it and download it again ({type(err).__name__}: {err})"
                ) from err
            raise
        # transformers keeps the renamings it loaded with and reverts them on save_pretrained: without this, a model
        # loaded here would be saved back under the old key names.
        conversions = getattr(model, "_weight_conversions", None)
        if conversions:
            model._weight_conversions = [c for c in conversions if not _is_legacy_renaming(c)]
        problems = {kind: sorted(info.get(kind) or []) for kind in ("missing_keys", "unexpected_keys")}
        if not allow_mismatch:
            problems["mismatched_keys"] = sorted(
                f"{key} {tuple(saved)} -> {tuple(wanted)}" for key, saved, wanted in info.get("mismatched_keys") or []
            )
        if any(problems.values()):
            details = "; ".join(f"{len(keys)} {kind.replace('_', ' ')}, e.g. {keys[:4]}" for kind, keys in problems.items() if keys)
            raise ValueError(
                f"the weights in {pretrained_model_name_or_path} do not match the model its config describes "
                f"({details}); was config.json edited, or the folder assembled from different runs?"
            )
        nonfinite = nonfinite_parameters(model)
        if nonfinite:
            # A run whose loss went to NaN saves weights that predict NaN for every input; loading such a folder is
            # allowed (to inspect it), serving or publishing it is not (the pipeline refuses it).
            logger.warning(
                "%s holds NaN or infinite values in %d of its %d weight tensors (e.g. %s): the run that saved it "
                "diverged, and the model predicts NaN. The pipeline refuses to serve it; retrain (a lower learning "
                "rate) or load an earlier checkpoint.",
                pretrained_model_name_or_path, len(nonfinite), sum(1 for _ in _weight_tensors(model)),
                ", ".join(nonfinite[:3]),
            )
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """`PreTrainedModel.save_pretrained` (and so `push_to_hub`), with the "multimodal-classification" pipeline
        declared as transformers' `Pipeline.save_pretrained` declares one: `config.custom_pipelines` names
        `pipeline_dmil.MultimodalClassificationPipeline` and its code is saved beside the model's remote code. The
        folder (or Hub repo) then serves `pipeline("multimodal-classification", model=..., trust_remote_code=True)`
        where dmil_hf is not installed; where it is imported, its registered task serves the folder without
        `trust_remote_code`. The caller's config is left as it was.

        The processor is no part of the model: save it into the same folder (`processor.save_pretrained(folder)`,
        what `save_for_pipeline` and `DMILTrainer` do), or give it to the pipeline (`pipeline(..., processor=...)`).
        """
        # Only where the model's code is saved with it (its class registered for the Auto classes, as importing
        # dmil_hf does) and the pipeline's code is at hand to be copied (DMILConfig.save_pretrained copies it).
        declares = self.is_remote_code() and pipeline_code_file() is not None
        config = self.config
        had, previous = "custom_pipelines" in config.__dict__, config.__dict__.get("custom_pipelines")
        if declares:
            # An entry already there wins (a pipeline subclass saving itself, `Pipeline.save_pretrained`).
            config.custom_pipelines = {PIPELINE_TASK: dict(PIPELINE_ENTRY), **(previous or {})}
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            if declares:
                if had:
                    config.custom_pipelines = previous
                else:
                    del config.custom_pipelines

    @property
    def is_gradient_checkpointing(self) -> bool:
        # peft reads this name when it wraps the model; transformers 5.24 deprecated it for is_activation_checkpointing
        # with a FutureWarning a LoRA user can do nothing about. Same answer, no warning, on every version.
        return any(getattr(module, "gradient_checkpointing", False) for module in self.modules())

    def _init_weights(self, module: nn.Module) -> None:
        # Backbones are dispatched to their own _init_weights by transformers; only DMIL's heads land here. They keep
        # PyTorch's default (Kaiming-uniform) init, which trains the small MLPs from scratch better than N(0, 0.02).
        if isinstance(module, (nn.Linear, nn.LayerNorm)):
            module.reset_parameters()


def _weight_tensors(model: nn.Module):
    """(name, tensor) of every floating-point parameter and buffer that holds values (not on the meta device)."""
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_floating_point() and tensor.device.type != "meta":
            yield name, tensor


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """The names of `model`'s floating-point parameters and buffers that hold a NaN or an infinite value.

    A model that predicts from such weights returns NaN for every input: the pipeline refuses to serve one, and what
    saves a final model or publishes one should refuse it too.

    Example:

    ```python
    >>> import torch
    >>> from dmil_hf.models.dmil.modeling_dmil import nonfinite_parameters
    >>> layer = torch.nn.Linear(2, 2)
    >>> nonfinite_parameters(layer)
    []
    >>> with torch.no_grad():
    ...     layer.bias[0] = float("nan")
    >>> nonfinite_parameters(layer)
    ['bias']
    ```
    """
    with torch.no_grad():
        return [name for name, tensor in _weight_tensors(model) if not bool(torch.isfinite(tensor).all())]


# What the header of a safetensors file is: an 8-byte little-endian length, then that many bytes of JSON naming each
# tensor's byte range in the data that follows.
_SAFETENSORS_HEADER_LIMIT = 100_000_000
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}


def _safetensors_problem(path: str) -> str | None:
    """What is wrong with the safetensors file at `path` (cut short, empty, an edited header), or None if its header
    and size agree. Reads the header only."""
    import json

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if size == 0:
                return "it is empty (0 bytes)"
            if len(head) < 8:
                return f"it has {size} bytes, fewer than the 8 of a safetensors header's length"
            length = int.from_bytes(head, "little")
            if length > min(size - 8, _SAFETENSORS_HEADER_LIMIT):
                return (f"its first 8 bytes give a header of {length} bytes, but the file has {size} bytes in all "
                        "(cut short, or not a safetensors file)")
            raw = f.read(length)
    except OSError as err:
        return f"it cannot be read ({err})"
    try:
        header = json.loads(raw)
        tensors = {key: entry for key, entry in header.items() if key != "__metadata__"}
        spans = {key: (int(entry["data_offsets"][0]), int(entry["data_offsets"][1])) for key, entry in tensors.items()}
        sizes = {key: math.prod(int(d) for d in entry["shape"]) * _DTYPE_BYTES.get(entry["dtype"], 0)
                 for key, entry in tensors.items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "its header is not the JSON table of tensors a safetensors file starts with (edited or damaged)"
    for key, (start, end) in spans.items():
        if sizes[key] and end - start != sizes[key]:
            return (f"its header gives the tensor {key!r} (dtype {tensors[key]['dtype']}, shape "
                    f"{tensors[key]['shape']}) {end - start} bytes where that dtype and shape take {sizes[key]} "
                    "(the header was edited)")
    needed = 8 + length + max((end for _, end in spans.values()), default=0)
    if needed != size:
        return (f"its header lists tensors up to byte {needed}, but the file has {size} bytes "
                f"({'cut short' if size < needed else 'with bytes the header does not cover'})")
    return None


def _broken_weight_files(path: str | os.PathLike, subfolder: str = "") -> list[str]:
    """`"<file>: <what is wrong>"` for each broken safetensors file of a local model folder, or of the copy in the
    Hub cache of a repo id (only what is already there: nothing is downloaded)."""
    folder = os.path.join(os.fspath(path), subfolder)
    if os.path.isdir(folder):
        files = sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".safetensors"))
    else:
        from transformers.utils import cached_file

        try:
            found = cached_file(os.fspath(path), "model.safetensors", subfolder=subfolder, local_files_only=True,
                                _raise_exceptions_for_missing_entries=False)
        except Exception:  # not a repo id, nothing cached: no file to examine
            found = None
        files = [found] if found else []
    problems = ((file, _safetensors_problem(file)) for file in files)
    return [f"{file}: {problem}" for file, problem in problems if problem]


def _is_legacy_renaming(conversion: object) -> bool:
    sources = getattr(conversion, "source_patterns", None) or ()
    sources = [sources] if isinstance(sources, str) else list(sources)
    return bool(sources) and all(source in LEGACY_KEY_MAPPING for source in sources)


def _resolve_class(path: str) -> type:
    module_name, _, class_name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def _init_kwargs(spec: BackboneSpec, pooling: str | None) -> dict:
    kwargs = dict(spec.init_kwargs)
    if pooling == "pooler":
        kwargs.pop("add_pooling_layer", None)  # the pooler is what this model pools with: build it
    return kwargs


def _build_backbone(config: PretrainedConfig, spec: BackboneSpec, pooling: str) -> PreTrainedModel:
    if config.model_type in LOCAL_ENCODERS:
        return LOCAL_ENCODERS[config.model_type](config)
    if spec.model_class:
        return _resolve_class(spec.model_class)(config, **_init_kwargs(spec, pooling))
    return AutoModel.from_config(config, **_init_kwargs(spec, pooling))


def _load_backbone(path: str, modality: Modality, pooling: str | None, options: dict) -> PreTrainedModel:
    """A pretrained backbone from a Hub id or local path; `options` are the modality's prefixed kwargs."""
    extra = dict(options)
    hub_kwargs = load_kwargs_config(extra)
    dtype = extra.pop("dtype", torch.float32)
    # Config attributes among the prefixed kwargs (text_hidden_dropout_prob=0.0) update the backbone config, as in
    # from_encoder_decoder_pretrained; the rest go to the model's from_pretrained. Passing them all next to an
    # explicit config= would hand config attributes to the model's __init__, a TypeError.
    full_config, model_kwargs = AutoConfig.from_pretrained(
        path, return_unused_kwargs=True, **hub_kwargs, **{k: v for k, v in extra.items() if k not in hub_kwargs}
    )
    config = _as_backbone_config(full_config, modality.kind)
    check_backbone_fits(modality.name, modality.kind, config)
    spec = backbone_spec(config.model_type, modality.kind, config)
    load_kwargs = {**_init_kwargs(spec, pooling), **hub_kwargs, **model_kwargs, "dtype": dtype}
    if config.model_type in LOCAL_ENCODERS:
        return LOCAL_ENCODERS[config.model_type].from_pretrained(path, config=config, **load_kwargs)
    if spec.model_class and spec.model_class.rpartition(".")[2] not in (config.architectures or []):
        # A full encoder-decoder checkpoint (Whisper): its keys are "encoder.*"/"model.encoder.*", which the encoder
        # class alone would not match (its weights would silently stay random). Load it whole and keep the encoder.
        return AutoModel.from_pretrained(path, config=config, **load_kwargs).get_encoder()
    loader = _resolve_class(spec.model_class) if spec.model_class else AutoModel
    if spec.init_kwargs.get("add_pooling_layer") is False and "add_pooling_layer" in load_kwargs:
        return _load_without_pooler(loader, path, config, load_kwargs)
    return loader.from_pretrained(path, config=config, **load_kwargs)


class _DropLoadReport(logging.Filter):
    """Drops transformers' per-load weight report (we report what matters ourselves)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


def _load_without_pooler(loader: Any, path: str, config: PretrainedConfig, load_kwargs: dict) -> PreTrainedModel:
    """Load a backbone built without its pooler (BERT's NSP pooler, ViT's) from a checkpoint that has one.

    transformers would print a load report of the pooler's weights as UNEXPECTED on every load, though leaving them out
    is the point; its report is silenced here and any other missing or unexpected weight is reported instead.
    """
    from transformers.utils import logging as hf_logging

    # A filter, not a higher level: transformers runs extra checks (and logs their warnings) when that logger's level
    # is WARNING or above.
    report_logger = hf_logging.get_logger("transformers.modeling_utils")
    drop_report = _DropLoadReport()
    report_logger.addFilter(drop_report)
    try:
        backbone, info = loader.from_pretrained(path, config=config, output_loading_info=True, **load_kwargs)
    finally:
        report_logger.removeFilter(drop_report)
    unexpected = sorted(k for k in info.get("unexpected_keys") or [] if not k.startswith("pooler."))
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or [])
    if unexpected or missing or mismatched:
        logger.warning(
            "Loading the %s backbone from %s: %s", config.model_type, path,
            "; ".join(f"{len(keys)} {kind} weights, e.g. {keys[:4]}" for kind, keys in
                      (("unused", unexpected), ("missing (initialised at random)", missing), ("mismatched", mismatched))
                      if keys),
        )
    return backbone


class DMILForMultimodalClassification(DMILPreTrainedModel):
    r"""Multimodal classifier over two to four pretrained encoders, with DMIL's interaction decomposition.

    Each row of the modality table (`config.modality_table`) has an encoder: any AutoModel backbone (text, image,
    audio), an image backbone applied to every frame of a video and pooled over time, a video backbone (VideoMAE),
    or dmil_hf's feature encoder for pre-extracted feature sequences. Its pooled vector is projected to Z_m, and the
    features of every modality go to the head of `config.paradigm`: `"dmil"` (level 1 splits Z_m into M_m, usable
    alone, and N_m, the rest; level 2 splits the M's into redundancy R and uniquenesses U_m; a fusion gives
    synergy S; a per-sample gate weighs the component heads), or the `"joint"`, `"ensemble"` and `"i2m2"` baselines.

    Inputs are keyword arguments named by the table (`model.input_names`): the three-slot names for modalities
    called `text`, `vision` and `audio` (`input_ids`, `attention_mask`, `token_type_ids`, `pixel_values`,
    `input_values` / `input_features`, `audio_attention_mask`), and `<name>_<input>` for every other modality
    (`rgb_pixel_values` `(batch, frames, channels, height, width)` with `rgb_attention_mask` `(batch, frames)`,
    `facs_input_features` `(batch, steps, dim)` with `facs_attention_mask`).

    Missing modalities: an input left out of the call (or marked False in `modality_mask`, shape
    `(batch, num_modalities)`, columns in table order, or whose mask keeps none of a sample's tokens, frames or
    steps) removes that modality's uniqueness from the gate, removes it
    from the synergy input (zeroed), and takes R from the predictors v_m of the modalities present; the gate
    renormalises over what remains. Synergy needs two present modalities. The joint baseline zeroes the missing
    features, the ensemble averages the modalities present and I2M2 leaves a missing modality's expert out of its
    product.

    Example:

    ```python
    >>> import torch
    >>> from transformers import BertConfig, ViTConfig, Wav2Vec2Config
    >>> from dmil_hf import DMILConfig, DMILForMultimodalClassification, Modality
    >>> tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    >>> config = DMILConfig(text_config=BertConfig(vocab_size=99, **tiny),
    ...                     vision_config=ViTConfig(image_size=32, patch_size=8, **tiny), num_labels=3)
    >>> model = DMILForMultimodalClassification(config).eval()
    >>> out = model(input_ids=torch.randint(0, 99, (2, 7)), pixel_values=torch.randn(2, 3, 32, 32))
    >>> out.logits.shape, out.interaction_weights.shape
    (torch.Size([2, 3]), torch.Size([2, 4]))
    >>> video = DMILConfig(modality_table=[Modality("rgb", "video", ViTConfig(image_size=32, patch_size=8, **tiny)),
    ...                                    Modality("audio", "audio", Wav2Vec2Config(**tiny))], num_labels=3)
    >>> model = DMILForMultimodalClassification(video).eval()
    >>> model.input_names
    ['rgb_pixel_values', 'rgb_attention_mask', 'input_values', 'input_features', 'audio_attention_mask']
    >>> model(rgb_pixel_values=torch.randn(2, 4, 3, 32, 32), input_values=torch.randn(2, 1600)).logits.shape
    torch.Size([2, 3])
    ```
    """

    def __init__(self, config: DMILConfig, backbones: dict[str, PreTrainedModel] | None = None):
        super().__init__(config)
        if len(config.modalities) < 2:
            raise ValueError(
                "DMILForMultimodalClassification needs a config with two to four modalities (modality_table, or two or "
                "three of text_config, vision_config and audio_config)"
            )
        backbones = dict(backbones or {})
        self.modalities = config.modalities
        self.specs = {m.name: backbone_spec(m.backbone.model_type, m.kind, m.backbone) for m in config.modality_specs}
        self.pooling = {m: config.pooling.get(m, self.specs[m].pooling) for m in self.modalities}
        self.backbones = nn.ModuleDict()
        for m in self.modalities:
            backbone = backbones.pop(m, None) or _build_backbone(config.backbone_config(m), self.specs[m], self.pooling[m])
            # Share the config object so edits to model.config.<m>_config reach the backbone.
            backbone.config = config.backbone_config(m)
            self.backbones[m] = backbone
        if backbones:
            raise ValueError(f"backbones given for modalities the config lacks: {sorted(backbones)}")
        self.routes = {m.name: self._route(m) for m in config.modality_specs}
        widths = {m: backbone_width(config.backbone_config(m), self.specs[m]) for m in self.modalities}
        self.projections = nn.ModuleDict(
            {m: PROJECTIONS[config.projection](widths[m], config.feature_dim) for m in self.modalities}
        )
        # The width of each modality's features Z_m, as the head reads them.
        self.feature_widths = {
            m: projected_width(config.projection, widths[m], config.feature_dim) for m in self.modalities
        }
        self.head = HEADS[config.paradigm](config, self.feature_widths)
        self.main_input_name = self.routes[self.modalities[0]].names.main
        # Every backbone's layer classes (its own `_no_split_modules`, or the table's), so that FSDP's transformer
        # auto-wrap and device_map="auto" find them with no `fsdp_transformer_layer_cls_to_wrap` from the user:
        # transformers' post_init gathers `_no_split_modules` from direct children only, and the backbones sit one
        # level down, in a ModuleDict. Set before post_init, which keeps it.
        self._no_split_modules = set().union(
            *(backbone_no_split_modules(self.backbones[m], self.specs[m]) for m in self.modalities)
        )
        self.post_init()
        if config.fast_paths:
            apply_fast_paths(self.backbones, config.fast_paths)

    def _route(self, modality: Modality) -> ModalityRoute:
        backbone = self.backbones[modality.name]
        spec = self.specs[modality.name]
        backbone_input = backbone.main_input_name
        # Again with the backbone built: a remote-code family's input is only known now.
        check_backbone_fits(modality.name, modality.kind, backbone.config, backbone_input)
        takes_mask = "attention_mask" in inspect.signature(backbone.forward).parameters
        names = input_names(modality, backbone_input if modality.kind == "audio" else None)
        return ModalityRoute(modality, names, spec, modality.backbone, backbone_input, takes_mask)

    @property
    def checks_input_values(self) -> bool:
        """Whether forward reads input values on the host to check them (NaN/inf, token ids, 0/1 masks, label
        ranges): `config.check_inputs`, except while `torch.export` traces the model. An exported graph cannot branch
        on tensor values (each read would stop the export with GuardOnDataDependentSymNode), so the exported program
        runs without these checks, as a model with `check_inputs=False` does; shape and dtype checks stay."""
        return self.config.check_inputs and not torch.compiler.is_exporting()

    @property
    def input_names(self) -> list[str]:
        """Every keyword input `forward` takes besides `modality_mask`, `labels` and `stage`, in table order."""
        return [name for route in self.routes.values() for name in route.names.all]

    # ---------------------------------------------------------------- construction helpers

    @classmethod
    def from_backbones_pretrained(
        cls,
        text: str | PretrainedConfig | None = None,
        vision: str | PretrainedConfig | None = None,
        audio: str | PretrainedConfig | None = None,
        modality_table: list[Modality] | None = None,
        **kwargs,
    ) -> "DMILForMultimodalClassification":
        """Build a model around pretrained backbones (Hub ids or local paths); DMIL's own heads start fresh.

        Give the modalities as `text=`, `vision=`, `audio=` (the three-slot form) or as `modality_table`, whose rows'
        `backbone` is a Hub id or path (or a config). A backbone given as a config instead of a path is built from it
        with random weights (a pretrained text encoder next to small encoders trained from scratch, say).

        Keyword arguments prefixed with a modality's name and `_` go to that backbone's `from_pretrained` (e.g.
        `vision_revision="main"`, `rgb_attn_implementation="eager"`); the rest go to [`DMILConfig`] (e.g.
        `num_labels`, `latent_dim`, `paradigm`, `id2label`), and so does any of its own arguments whatever the
        modality names (`gate_objective` with a modality named `gate`). Backbones load in float32 whatever their checkpoint's
        dtype: mixed precision is the Trainer's job (`bf16=True`).
        """
        slots = {"text": text, "vision": vision, "audio": audio}
        if modality_table is None:
            rows = [Modality(name, kind, slots[name]) for name, kind in LEGACY_MODALITIES.items() if slots[name] is not None]
        elif any(value is not None for value in slots.values()):
            raise ValueError("give the backbones either as text=/vision=/audio= or as modality_table, not both")
        else:
            rows = list(modality_table)
        if len(rows) < 2:
            raise ValueError("from_backbones_pretrained needs at least two modalities (two of text=, vision=, audio=)")
        # The rest go to DMILConfig, its own arguments always (a modality named `latent` leaves `latent_dim` alone).
        options = pop_prefixed(kwargs, [row.name for row in rows], keep=config_arguments())
        pooling = dict(kwargs.get("pooling") or {})
        backbones, table = {}, []
        for row in rows:
            chosen = row.pooling or pooling.get(row.name)
            if isinstance(row.backbone, (str, bytes)) or hasattr(row.backbone, "__fspath__"):
                backbone = _load_backbone(str(row.backbone), row, chosen, options[row.name])
            else:
                config = _as_backbone_config(row.backbone if row.backbone is not None else {}, row.kind)
                check_backbone_fits(row.name, row.kind, config)
                spec = backbone_spec(config.model_type, row.kind, config)
                backbone = _build_backbone(config, spec, chosen or spec.pooling)
            backbones[row.name] = backbone
            table.append(Modality(row.name, row.kind, backbone.config, row.pooling, row.temporal_pooling, row.num_frames))
        config = DMILConfig(modality_table=table, **kwargs)
        return cls(config, backbones=backbones)

    def get_input_embeddings(self) -> nn.Module:
        # PEFT and activation checkpointing hook the input embeddings so that frozen backbones still pass gradients.
        first = next((m for m in self.modalities if self.routes[m].modality.kind == "text"), self.modalities[0])
        return self.backbones[first].get_input_embeddings()

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resize the token embeddings of the first text modality's backbone (after adding tokens to its tokenizer).
        The backbone resizes itself and updates its own config, which is this model's `<modality>_config`, so the
        saved model loads back; PreTrainedModel's version would set a `vocab_size` on DMILConfig instead."""
        text = [m for m in self.modalities if self.routes[m].modality.kind == "text"]
        if not text:
            raise ValueError(
                f"resize_token_embeddings needs a text modality; this model has {', '.join(self.modalities)}"
            )
        return self.backbones[text[0]].resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)

    def stage_modules(self) -> dict[str, nn.Module]:
        """The modules the stage table (`stages_dmil.STAGE_PLANS`) names: the backbones, the projections and the
        head's parts (`intra_decomposition`, `interaction_gate`, ...)."""
        return {"backbones": self.backbones, "projections": self.projections, **dict(self.head.named_children())}

    # ---------------------------------------------------------------- input routing

    def _route_inputs(self, inputs: dict[str, torch.Tensor | None]) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
        """Check the keyword inputs and group them per modality as the backbones' forward kwargs."""
        given = {name: value for name, value in inputs.items() if value is not None}
        owner = {name: m for m, route in self.routes.items() for name in route.names.all}
        unknown = [name for name in given if name not in owner]
        for name in unknown:
            slot = _THREE_SLOT_INPUTS.get(name)
            if slot is not None:
                raise ValueError(
                    f"{name} was given, but this model has no {slot} backbone (configured modalities: "
                    f"{', '.join(self.modalities)}; inputs: {', '.join(self.input_names)})"
                )
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} {'was' if len(unknown) == 1 else 'were'} given, but this model has no modality "
                f"that takes {'it' if len(unknown) == 1 else 'them'} (configured modalities: "
                f"{', '.join(self.modalities)}; inputs: {', '.join(self.input_names)})"
            )
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        batch_sizes: dict[str, int] = {}
        for m, route in self.routes.items():
            mine = {name: value for name, value in given.items() if owner[name] == m}
            if not mine:
                continue
            grouped[m] = check_modality(route, mine, self.checks_input_values)
            for name, value in mine.items():
                if isinstance(value, torch.Tensor) and value.dim():
                    batch_sizes[name] = value.shape[0]
        if not grouped:
            raise ValueError(
                f"no input given: pass at least one of the model's modalities ({', '.join(self.modalities)}; "
                f"inputs: {', '.join(self.input_names)})"
            )
        # Compared pairwise, not through a set: under torch.export with a dynamic batch the sizes are SymInts, which
        # cannot be hashed but compare equal when they are the same dimension.
        sizes = list(batch_sizes.values())
        if any(size != sizes[0] for size in sizes[1:]):
            raise ValueError(f"inputs disagree on the batch size: {batch_sizes}")
        return grouped, next(iter(batch_sizes.values()))

    def _presence(
        self, grouped: dict, batch_size: int, modality_mask: torch.Tensor | None, device
    ) -> tuple[torch.Tensor, bool]:
        """Which samples have which modality, `(batch, num_modalities)` bool, and whether every sample has every
        modality (False whenever that is not known without a host sync, which `check_inputs=False` rules out).

        A modality is missing for a sample when its inputs are left out of the call, when `modality_mask` says so,
        or when the sample's time mask keeps nothing (every token, sample, frame or step masked out): an input made
        of padding alone carries nothing, and would otherwise get a uniqueness weight of its own.
        """
        # Built on the device (a fill per absent modality): torch.tensor(list, device=cuda) would be a blocking
        # host-to-device copy in every forward.
        present = torch.ones(batch_size, len(self.modalities), dtype=torch.bool, device=device)
        time_masked = False
        for k, m in enumerate(self.modalities):
            if m not in grouped:
                present[:, k] = False
                continue
            mask = grouped[m].get("attention_mask")
            if mask is not None:
                present[:, k] &= mask.to(device=device).bool().any(dim=1)
                time_masked = True
        if modality_mask is not None:
            if not isinstance(modality_mask, torch.Tensor) or modality_mask.shape != (batch_size, len(self.modalities)):
                raise ValueError(
                    f"modality_mask must be a tensor of shape (batch, {len(self.modalities)}) with columns "
                    f"{self.modalities}, got {getattr(modality_mask, 'shape', type(modality_mask).__name__)}"
                )
            if modality_mask.dtype != torch.bool and self.checks_input_values:
                # A float mask like 0.5 would silently count as present: only 0 and 1 mean something.
                if not bool(((modality_mask == 0) | (modality_mask == 1)).all()):
                    raise ValueError("modality_mask must hold only 0/1 or False/True, got other values")
            present = present & modality_mask.to(device=device, dtype=torch.bool)
        all_given = modality_mask is None and len(grouped) == len(self.modalities)
        if self.checks_input_values:
            # One host sync for both reads.
            some, every = torch.stack([present.any(dim=1).all(), present.all()]).tolist()
            if not some:
                empty = (~present.any(dim=1)).nonzero().flatten().tolist()
                raise ValueError(
                    f"every sample needs at least one modality; sample(s) {empty} have none (modality_mask False, or "
                    "every token, frame or step of their inputs masked out by the attention masks)"
                )
            all_given = all_given and every
        elif time_masked:
            all_given = False  # a sample may have masked out a modality; not known without reading the masks
        return present, all_given

    def _check_labels(self, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The labels checked for `config.problem_type` and in the form the losses take. A config without a problem
        type gets one from transformers' rule (`problem_types_dmil.infer_problem_type`: one output is a regression,
        integer labels are class ids, other labels multi-hot), stored in `config.problem_type` once the labels pass,
        as transformers' `*ForSequenceClassification` models do on their first forward."""
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        config = self.config
        problem_type = resolve_problem_type(config, labels)
        if problem_type == SINGLE_LABEL and config.num_labels < 2:
            raise ValueError(
                f"problem_type 'single_label_classification' needs num_labels >= 2, got {config.num_labels} (one "
                "output is a regression: problem_type='regression')"
            )
        try:
            labels = PROBLEM_TYPES[problem_type].check_labels(
                labels, batch_size, config.num_labels, self.checks_input_values
            )
        except (TypeError, ValueError) as err:
            if config.problem_type is None:
                raise type(err)(
                    f"{err} [problem_type {problem_type!r} inferred from num_labels={config.num_labels} and labels of "
                    f"dtype {labels.dtype}; set config.problem_type to choose another]"
                ) from None
            raise
        if config.problem_type is None:
            config.problem_type = problem_type
        return labels

    # ---------------------------------------------------------------- encoding

    def encode(self, modality: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled encoder features of one modality, `(batch, width)`; a video through an image backbone is encoded
        frame by frame and pooled over its frames (`temporal_pooling`)."""
        route = self.routes[modality]
        if route.modality.kind == "video" and not route.per_frame and "attention_mask" in inputs:
            # A video backbone (VideoMAE) reads every frame of its fixed-length clip and takes no frame mask: a short
            # clip's padded frames are replaced by its own frames, stretched over the clip, so that padding is never
            # read as real (black) frames. A clip with every frame masked is a missing modality (`_presence`).
            inputs = dict(inputs)
            mask = inputs.pop("attention_mask")
            inputs[route.backbone_input] = fill_clip(inputs[route.backbone_input], mask)
        if not route.per_frame:
            return self._encode_backbone(modality, inputs)
        frames = inputs[route.backbone_input]
        batch, steps = frames.shape[:2]
        flat = {route.backbone_input: frames.flatten(0, 1)}
        per_frame = self._encode_backbone(modality, flat).view(batch, steps, -1)
        return TEMPORAL_POOLERS[route.modality.temporal_pooling](per_frame, inputs.get("attention_mask"))

    def _encode_backbone(self, modality: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        route, backbone = self.routes[modality], self.backbones[modality]
        mask = inputs.get("attention_mask")
        # Floating inputs follow the backbone's dtype (float64 audio, float32 images into a bf16 model); ids and masks
        # stay integer.
        dtype = backbone.dtype
        kwargs = {k: v.to(dtype) if v.is_floating_point() and k != "attention_mask" else v for k, v in inputs.items()}
        if mask is not None and not route.takes_mask:
            kwargs.pop("attention_mask")
        output = backbone(**kwargs)
        if self.pooling[modality] == "pooler" and getattr(output, "pooler_output", None) is None:
            raise ValueError(
                f"pooling 'pooler' was chosen for the {modality} modality's {backbone.config.model_type} backbone, which "
                "returns no pooler_output; use 'cls' or 'mean'"
            )
        return POOLERS[self.pooling[modality]](output, mask, backbone)

    # ---------------------------------------------------------------- forward

    def forward(
        self,
        modality_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        stage: int | None = None,
        return_dict: bool | None = None,
        **modality_inputs: torch.Tensor | None,
    ) -> DMILOutput | tuple:
        r"""
        Args:
            **modality_inputs: each modality's tensors by the names in `model.input_names`: for the three-slot
                modalities `input_ids`, `attention_mask`, `token_type_ids` (text), `pixel_values`
                `(batch, channels, height, width)` (vision), `input_values` / `input_features` and
                `audio_attention_mask` (audio, as its backbone expects it); for any other modality `<name>_<input>`,
                e.g. `rgb_pixel_values` `(batch, frames, channels, height, width)` and `rgb_attention_mask`
                `(batch, frames)` for a video, `facs_input_features` `(batch, steps, dim)` for features.
            modality_mask: `(batch, num_modalities)` bool, False where a sample lacks that modality (columns in the
                order of `config.modalities`). A sample whose mask of a modality keeps nothing (every token, frame
                or step masked out) lacks it too.
            labels: by `config.problem_type`: `(batch,)` class ids in `[0, num_labels)`
                (`"single_label_classification"`), `(batch, num_labels)` multi-hot targets in [0, 1]
                (`"multi_label_classification"`), or `(batch,)` / `(batch, num_labels)` real targets (`"regression"`).
                Without a problem type, the first forward with labels sets it by transformers' rule.
            stage: which training stage's loss to compute (1, 2 or 3; default 3, every term). Stage 1 runs only
                the backbones and level 1.
        """
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        stage = 3 if stage is None else stage
        if stage not in STAGES:
            raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
        grouped, batch_size = self._route_inputs(modality_inputs)
        if labels is not None:
            labels = self._check_labels(labels, batch_size)
        device = next(iter(next(iter(grouped.values())).values())).device
        present, all_given = self._presence(grouped, batch_size, modality_mask, device)

        z = {m: self.projections[m](self.encode(m, grouped[m])) for m in self.modalities if m in grouped}
        dtype = next(iter(z.values())).dtype
        for m in self.modalities:  # a modality absent from the whole batch: zero features, never a backbone call
            if m not in z:
                z[m] = torch.zeros(batch_size, self.feature_widths[m], device=device, dtype=dtype)
        # Known without looking at tensor values (or read in check_inputs' host sync), so skipping the missing-modality
        # fallback is no data-dependent branch of a compiled graph.
        out = self.head(ModalityFeatures(z, present, all_given), labels, stage)
        return out if return_dict else out.to_tuple()


def config_arguments() -> set[str]:
    """The keyword arguments `DMILConfig` takes as its own: its fields and `PretrainedConfig`'s (`num_labels`,
    `id2label`, `problem_type`, ...), which `from_backbones_pretrained` never reads as a modality's loader argument."""
    names = {*inspect.signature(DMILConfig.__init__).parameters, *inspect.signature(PretrainedConfig.__init__).parameters}
    return (names - {"self", "kwargs"}) | {"num_labels", "attn_implementation", "output_attentions", "custom_pipelines"}


def load_kwargs_config(load_kwargs: dict) -> dict:
    """The subset of from_pretrained kwargs that AutoConfig.from_pretrained understands."""
    keys = ("revision", "cache_dir", "token", "local_files_only", "trust_remote_code", "subfolder")
    return {k: v for k, v in load_kwargs.items() if k in keys}
