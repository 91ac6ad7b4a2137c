"""`Model`: a diffusers pipeline plus what interpretability needs to know about it.

A Model knows its family, its text encoders (site prefixes "text", "text_2", "text_3"),
how each encoder is tokenised exactly as the pipeline does it, and its generation defaults.
An encoder-only Model (family "encoder": a transformers BERT / XLM-R / CLIP-text / T5-encoder
folder, e.g. the real multilingual-e5-small of `interp.zoo.e5_small()`) has one encoder "text"
and no denoiser: text sites, capture, patch and the analyses work; generation raises.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from interp.errors import CultureLensError, PromptTooLongError, SiteError, UnsupportedModelError
from interp.model.folders import DEFAULTS_FILE
from interp.model.layout import (ARCH_LAYOUT, ARCH_OF_CLASS, ENCODER_CLASS_OF_TYPE, ENCODER_ONLY_ARCH_OF_CLASS,
                                 get_path)
from interp.model.sites import all_sites
from interp.result_io import atomic_write_text

_T5_MAX_SEQUENCE = 256  # StableDiffusion3Pipeline's default max_sequence_length

ENCODER_ONLY = "encoder"  # Model.family of an encoder-only model
# The length an encoder-only model pads prompts to unless told otherwise: what the T2I pipelines
# here pad to (CLIP, AltDiffusion: 77). Padding to a BERT's 512 would make every captured
# attention pattern 44x larger for the same short prompts; pass max_length= for longer texts.
ENCODER_MAX_LENGTH = 77

_PREFIX_OF_COMPONENT = {"text_encoder": "text", "text_encoder_2": "text_2", "text_encoder_3": "text_3"}


@dataclass
class TextEncoder:
    """One text encoder of a pipeline with its tokenizer and shape facts."""

    prefix: str
    component: str
    module: torch.nn.Module
    tokenizer: Any
    arch: str
    family: str
    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    max_length: int
    causal: bool
    layers_path: str
    attention_mask: bool | None = None  # None: as the pipeline does (the config says); encoder-only: True

    @property
    def uses_attention_mask(self) -> bool:
        """Whether the pipeline passes the attention mask to this encoder (an encoder-only model
        always does: padding then changes no real token's activations)."""
        if self.attention_mask is not None:
            return self.attention_mask
        return bool(getattr(self.module.config, "use_attention_mask", False))

    @property
    def output_is_penultimate(self) -> bool:
        """SDXL and SD3 feed the UNet the CLIP penultimate hidden state (no final LayerNorm)."""
        return self.arch == "clip" and self.family in ("sdxl", "sd3")

    @contextlib.contextmanager
    def eager_attention(self, needed: bool = True):
        """Switch to eager attention (the only one that forms probabilities) and back."""
        old = getattr(self.module.config, "_attn_implementation", None)
        if not needed or old == "eager":
            yield
            return
        self.module.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.module.set_attn_implementation(old)

    def layer(self, i: int) -> torch.nn.Module:
        return get_path(self.module, self.layers_path)[i]


def _text_encoder(prefix: str, component: str, module: Any, tokenizer: Any, family: str) -> TextEncoder:
    cls = type(module).__name__
    archs = ENCODER_ONLY_ARCH_OF_CLASS if family == ENCODER_ONLY else ARCH_OF_CLASS
    arch = archs.get(cls)
    if arch is None:
        raise UnsupportedModelError(
            f"pipeline component {component!r} is a {cls}; supported text encoders: {', '.join(archs)}"
        )
    cfg = module.config
    layout = ARCH_LAYOUT[arch]
    layers_path = next((p for p in layout["layers"] if _has_path(module, p)), None)
    if layers_path is None:
        raise UnsupportedModelError(f"{component} ({cls}): no layer list at any of {layout['layers']}")
    if arch == "t5":
        d_model, n_heads, d_mlp = cfg.d_model, cfg.num_heads, cfg.d_ff
        max_length = min(int(getattr(tokenizer, "model_max_length", _T5_MAX_SEQUENCE)), _T5_MAX_SEQUENCE)
    else:
        d_model, n_heads, d_mlp = cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size
        max_length = int(tokenizer.model_max_length)
    if tokenizer.pad_token is None:
        raise UnsupportedModelError(f"tokenizer of {component} has no pad token; the pipeline pads to max_length")
    return TextEncoder(
        prefix=prefix, component=component, module=module, tokenizer=tokenizer, arch=arch, family=family,
        n_layers=len(get_path(module, layers_path)), d_model=d_model, n_heads=n_heads, d_mlp=d_mlp,
        max_length=max_length, causal=arch == "clip", layers_path=layers_path,
    )


def _has_path(root: Any, path: str) -> bool:
    try:
        get_path(root, path)
        return True
    except (AttributeError, IndexError):
        return False


def family_of(pipe: Any) -> str:
    """The culturelens family of a pipeline instance, or UnsupportedModelError."""
    name = type(pipe).__name__
    if "XL" in name and hasattr(pipe, "text_encoder_2"):
        return "sdxl"
    if "StableDiffusion3" in name:
        return "sd3"
    if name.startswith("Flux") and hasattr(pipe, "transformer"):
        return "flux"
    if "AltDiffusion" in name:
        return "altdiffusion"
    if name.startswith("StableDiffusion") and hasattr(pipe, "unet"):
        return "sd"
    # Any other single-encoder UNet pipeline that conditions on the last hidden state, as SD does
    # (e.g. the pixel-space CultureWorld organism, whose class ships in its folder).
    if hasattr(pipe, "unet") and hasattr(pipe, "text_encoder") and not hasattr(pipe, "text_encoder_2"):
        return "sd"
    raise UnsupportedModelError(
        f"pipeline class {name} is not supported; supported: StableDiffusionPipeline (SD 1.x/2.x), "
        "StableDiffusionXLPipeline, AltDiffusionPipeline, StableDiffusion3Pipeline, FluxPipeline"
    )


def no_generation(path: str | None) -> str:
    """Why an encoder-only model cannot do what needs a denoiser (one message for every path)."""
    where = f" (loaded from {path})" if path else ""
    return (f"this Model is a text encoder only{where}: it has no denoiser, so it cannot generate images "
            "(interp.generate, capture_generation, denoiser sites, patch on denoiser sites need a pipeline). "
            "Use interp.capture / interp.patch / interventions on its text sites, or load a diffusers pipeline folder")


class NoGenerationDefaults(dict):
    """`Model.defaults` of an encoder-only model: empty, and asking for a generation default
    (steps, guidance, height, width: what generation reads first) raises the clear error."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = path

    def __missing__(self, key: str) -> Any:
        raise UnsupportedModelError(f"no generation default {key!r}: " + no_generation(self.path))


class EncoderOnly:
    """What stands where a diffusers pipeline stands in an encoder-only `Model`: the encoder and its
    tokenizer under the pipeline's attribute names, `.device`, `.to()`, `save_pretrained()`. Calling
    it (generation) raises `UnsupportedModelError`."""

    def __init__(self, text_encoder: torch.nn.Module, tokenizer: Any, path: str | None = None) -> None:
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.path = path

    @property
    def components(self) -> dict[str, Any]:
        return {"text_encoder": self.text_encoder, "tokenizer": self.tokenizer}

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.text_encoder.parameters()).dtype

    def to(self, *args: Any, **kwargs: Any) -> "EncoderOnly":
        """Move the encoder (a device and/or dtype, as `torch.nn.Module.to`); `Model.to` calls this."""
        self.text_encoder.to(*args, **kwargs)
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Nothing to configure (a pipeline method that code written for pipelines may call)."""

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """The encoder and tokenizer in one transformers folder (what `interp.load` opens)."""
        self.text_encoder.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedModelError(no_generation(self.path))

    def __repr__(self) -> str:
        return f"EncoderOnly({type(self.text_encoder).__name__}, path={self.path!r})"


class _EmptyFp32ListFilter:
    """Drops diffusers' "should be kept in float32: []" warning (nothing to keep: pure noise)."""

    def filter(self, record: Any) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


def is_encoder_folder(path: Path) -> bool:
    """A transformers model folder (config.json, no model_index.json): opened as encoder-only."""
    return path.is_dir() and (path / "config.json").is_file() and not (path / "model_index.json").exists()


def load_encoder_folder(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        text_attention: str | None = "eager", max_length: int | None = None) -> "Model":
    """Open a transformers text-encoder folder (BERT, XLM-R, CLIP text, T5 encoder: config.json,
    weights, tokenizer files) as an encoder-only `Model` (see `Model.from_encoder`)."""
    import transformers
    from transformers import AutoTokenizer

    path = Path(path)
    cfg_file = path / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise UnsupportedModelError(f"{cfg_file}, line {e.lineno}: invalid JSON ({e.msg})") from e
    archs = [a for a in cfg.get("architectures") or [] if a in ENCODER_ONLY_ARCH_OF_CLASS]
    mtype = cfg.get("model_type")
    cls_name = archs[0] if archs else ENCODER_CLASS_OF_TYPE.get(mtype)
    if cls_name is None or cls_name == "RobertaSeriesModelWithTransformation":
        raise UnsupportedModelError(
            f"{cfg_file}: model_type {mtype!r} (architectures {cfg.get('architectures')}) is not a supported text "
            f"encoder; supported model types: {', '.join(ENCODER_CLASS_OF_TYPE)}")
    cls = getattr(transformers, cls_name)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if text_attention is not None:
        kwargs["attn_implementation"] = text_attention
    if cls_name == "BertModel":
        kwargs["add_pooling_layer"] = False  # a pooler, if the folder has one, is no site and no output here
    module = cls.from_pretrained(path, **kwargs).to(device).eval()
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UnsupportedModelError(f"{path}: no tokenizer that transformers can open ({e})") from e
    return Model.from_encoder(module, tok, path=str(path), max_length=max_length)


@dataclass
class EngineState:
    """A model's state in the edit engine and the tracers, declared here rather than hidden in
    `Model.__dict__`. Owned by `interp.engine.session` (`runtime`, `sessions`), `interp.methods`
    (`nnsight`) and `interp.model.sites` (`denoiser_sites`); `Model.to` drops what depends on the
    device and dtype (everything but the open sessions, which `to` refuses to run under)."""

    runtime: Any = None  # interp.engine.session._Runtime: step/branch bookkeeping shared by open sessions
    sessions: list[Any] = field(default_factory=list)  # open HookSessions, outermost first
    nnsight: dict[str, Any] = field(default_factory=dict)  # nnsight wrappers: encoder prefix or "pipeline"
    denoiser_sites: tuple[Any, list[Any]] | None = None  # (denoiser module, its resolved sites)

    def drop_device_caches(self) -> None:
        """Forget the wrappers, processors' runtime and resolved sites: rebuilt on next use."""
        self.runtime, self.denoiser_sites = None, None
        self.nnsight.clear()


@dataclass
class Model:
    """A loaded pipeline with named sites. Build with `interp.load` or `interp.tiny`; a transformers
    text-encoder folder loads as an encoder-only Model (`pipe` is then an `EncoderOnly`)."""

    pipe: Any
    family: str  # "sd" (SD 1.x/2.x and the organism), "sdxl", "altdiffusion", "sd3", "flux"; "encoder" (no denoiser)
    encoders: dict[str, TextEncoder]
    defaults: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    engine: EngineState = field(default_factory=EngineState, repr=False, compare=False)

    @classmethod
    def from_pipeline(cls, pipe: Any, defaults: dict[str, Any] | None = None, path: str | None = None) -> "Model":
        """Wrap an existing diffusers pipeline instance."""
        family = family_of(pipe)
        encoders: dict[str, TextEncoder] = {}
        for component, prefix in _PREFIX_OF_COMPONENT.items():
            module = getattr(pipe, component, None)
            if module is None:
                continue
            tok_name = component.replace("text_encoder", "tokenizer")
            encoders[prefix] = _text_encoder(prefix, component, module, getattr(pipe, tok_name), family)
        if not encoders:
            raise UnsupportedModelError(f"{type(pipe).__name__} has no text encoder")
        den = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
        # Pixel-space pipelines (no VAE) generate at the denoiser's own sample size.
        scale = getattr(pipe, "vae_scale_factor", 8) if getattr(pipe, "vae", None) is not None else 1
        sample = getattr(den.config, "sample_size", None) or getattr(pipe, "default_sample_size", 128)
        size = int(sample) * int(scale)
        merged = {"steps": 25, "guidance": 7.5, "height": size, "width": size}
        merged.update(defaults or {})
        return cls(pipe=pipe, family=family, encoders=encoders, defaults=merged, path=path)

    @classmethod
    def from_encoder(cls, module: torch.nn.Module, tokenizer: Any, path: str | None = None,
                     max_length: int | None = None) -> "Model":
        """An encoder-only Model (family "encoder") around a transformers text encoder: the same
        text sites (prefix "text"), capture, patch, interventions and analyses as a pipeline's
        encoder, no denoiser (generation is an UnsupportedModelError). Prompts are padded to
        `max_length` (default min(the tokenizer's model_max_length, 77)) and the attention mask is
        always passed, so padding changes no real token's activations."""
        enc = _text_encoder("text", "text_encoder", module, tokenizer, ENCODER_ONLY)
        limit = int(getattr(tokenizer, "model_max_length", ENCODER_MAX_LENGTH))
        limit = min(limit, int(getattr(module.config, "max_position_embeddings", limit)))
        n = min(limit, ENCODER_MAX_LENGTH) if max_length is None else int(max_length)
        if not 1 <= n <= limit:
            raise UnsupportedModelError(f"max_length={max_length}: this {enc.arch} encoder takes 1..{limit} tokens")
        enc.max_length, enc.attention_mask = n, True
        return cls(pipe=EncoderOnly(module, tokenizer, path), family=ENCODER_ONLY, encoders={"text": enc},
                   defaults=NoGenerationDefaults(path), path=path)

    # -- device / dtype ----------------------------------------------------------------------
    def to(self, *args: Any, **kwargs: Any) -> "Model":
        """Move the whole pipeline (every encoder and the denoiser; an encoder-only model its encoder)
        to a device and/or dtype, e.g. `model.to("cuda")`, `model.to(torch.float16)`,
        `model.to("cuda", torch.bfloat16)` (the pipeline's own `.to`), and clear the cached state
        that depends on them. Returns the model. Refused inside `interp.intervene` / a running
        generation (the installed hooks and processors belong to the old placement)."""
        if self.engine.sessions:
            raise CultureLensError("Model.to: interventions are installed on this model (inside interp.intervene "
                                   "or a generation); move it before or after, not during")
        import logging

        # diffusers warns at every dtype cast that "modules ... should be kept in float32: []" even
        # when that list is empty; only that empty-list warning is dropped.
        log = logging.getLogger("diffusers.models.modeling_utils")
        quiet = _EmptyFp32ListFilter()
        log.addFilter(quiet)
        try:
            self.pipe.to(*args, **kwargs)
        finally:
            log.removeFilter(quiet)
        self.engine.drop_device_caches()  # they hold modules and tensors of the old placement
        return self

    # -- facts -----------------------------------------------------------------------------
    @property
    def has_denoiser(self) -> bool:
        """False for an encoder-only model (`Model.from_encoder`)."""
        return self.family != ENCODER_ONLY

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoders["text"].module.dtype

    @property
    def denoiser(self) -> torch.nn.Module:
        """The UNet (SD, SDXL, AltDiffusion) or the MMDiT transformer (SD3, FLUX); an encoder-only
        model raises UnsupportedModelError."""
        if not self.has_denoiser:
            raise UnsupportedModelError(no_generation(self.path))
        return self.pipe.unet if hasattr(self.pipe, "unet") else self.pipe.transformer

    def joint_positions(self, height: int | None = None, width: int | None = None) -> dict[str, range]:
        """Which positions of an MMDiT joint sequence (the N axis of `transformer...attn.hook_*`
        sites) are text and which are image, for a generation of `height` × `width` pixels
        (default: the model's defaults): {"text": range, "image": range}.

        SD3: [image; text], text = CLIP tokens (padded to the T5 width) then T5 tokens, i.e.
        max_length(text) + max_length(text_3) positions. FLUX: [text; image], text = the T5 tokens.
        Image positions are latent patches in row-major order: (height / (vae scale · patch))
        × (width / (vae scale · patch)).
        """
        if self.family not in ("sd3", "flux"):
            raise UnsupportedModelError(f"joint_positions: a {self.family} model has no joint text+image sequence "
                                        "(its UNet cross-attends to text: keys of attn2 are the text tokens)")
        height = int(height or self.defaults["height"])
        width = int(width or self.defaults["width"])
        scale = int(getattr(self.pipe, "vae_scale_factor", 8))
        if self.family == "sd3":
            patch = int(self.denoiser.config.patch_size)
            n_img = (height // scale // patch) * (width // scale // patch)
            n_txt = self.encoders["text"].max_length + self.encoders["text_3"].max_length
            return {"image": range(0, n_img), "text": range(n_img, n_img + n_txt)}
        n_img = (height // scale // 2) * (width // scale // 2)  # FLUX packs 2×2 latent patches
        n_txt = self.encoders["text_2"].max_length
        return {"text": range(0, n_txt), "image": range(n_txt, n_txt + n_img)}

    def sites(self, kind: str | None = None) -> list[str]:
        """Valid site names; `kind` filters by site kind (text: "resid_post", "mlp_post", "pattern",
        "attn_out", "attn_q", "attn_k", "attn_v", "attn_z"; UNet: "xattn_{q,k,v,z,pattern,out}" (attn2), "sattn_..." (attn1), "tblock_out",
        "resnet_out"; MMDiT: "jattn_{q,k,v,z,pattern}", "img_out", "txt_out") or by prefix ("text",
        "text_2", "unet", "transformer")."""
        return [s.name for s in all_sites(self) if kind is None or kind in (s.kind, s.encoder)]

    def encoder(self, prefix: str = "text") -> TextEncoder:
        if prefix not in self.encoders:
            raise SiteError(f"no text encoder {prefix!r} in this {self.family} model; valid: {list(self.encoders)}")
        return self.encoders[prefix]

    # -- tokenisation ----------------------------------------------------------------------
    def tokenize(self, prompts: str | list[str], encoder: str = "text", truncate: bool = False) -> Any:
        """Tokenise exactly as the pipeline does (pad to max_length). A prompt that would be
        truncated raises PromptTooLongError naming its index, unless truncate=True (then a
        warning names it)."""
        import warnings

        enc = self.encoder(encoder)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        lengths = [len(ids) for ids in enc.tokenizer(prompts, truncation=False)["input_ids"]]
        long = [(i, n) for i, n in enumerate(lengths) if n > enc.max_length]
        if long:
            what = "; ".join(f"prompt {i} has {n} tokens ({prompts[i][:40]!r})" for i, n in long)
            msg = f"{encoder} encoder ({enc.arch}) takes at most {enc.max_length} tokens: {what}"
            if not truncate:
                raise PromptTooLongError(msg + " (pass truncate=True to truncate)")
            warnings.warn("truncated: " + msg, stacklevel=2)
        return enc.tokenizer(
            prompts, padding="max_length", max_length=enc.max_length, truncation=True, return_tensors="pt"
        ).to(self.device)

    def check_prompts(self, prompts: list[str], truncate: bool = False) -> None:
        """Raise PromptTooLongError if any encoder would truncate any prompt."""
        for prefix in self.encoders:
            self.tokenize(prompts, prefix, truncate=truncate)

    # -- persistence -----------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Save the pipeline folder and this model's generation defaults (culturelens.json); an
        encoder-only model saves its transformers folder (encoder + tokenizer)."""
        path = Path(path)
        self.pipe.save_pretrained(path)
        if not self.has_denoiser:  # a transformers folder: no generation defaults to keep
            return path
        atomic_write_text(path / DEFAULTS_FILE, json.dumps(self.defaults, indent=2, sort_keys=True))
        return path

    def __repr__(self) -> str:
        encs = ", ".join(f"{p}={e.arch}[{e.n_layers}x{e.d_model}]" for p, e in self.encoders.items())
        return f"Model(family={self.family!r}, {encs}, device={self.device}, dtype={self.dtype})"
