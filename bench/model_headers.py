"""The tensor tables of the model files people have (names, shapes and dtypes as the real
files hold them), and a writer of small ``.safetensors`` files that carry them.

The tables follow the original (LDM / SGM / BFL) layouts key for key: an SD 1.x
checkpoint has the 1,131 tensors of ``v1-5-pruned-emaonly.safetensors`` (UNet 686, VAE
248, CLIP 197), SDXL base the 2,515 of ``sd_xl_base_1.0.safetensors``, a kohya SD 1.x LoRA
792 (264 modules: down, up, alpha). ``write_safetensors`` writes a valid file of zeros
(``safetensors.safe_open`` reads it) whose header names every tensor; to keep files small
it *shrinks* large tables: every dimension that no architecture detection reads becomes 1,
and the ones read keep their real size (``KEPT_DIMENSIONS``: a UNet's input channels and
cross-attention width, SD3's position count, a LoRA's in-features, ...). Tables under a
million elements (embeddings, tiny test models) are written whole.

The benchmark of the model catalog (``bench/catalog_scan.py``) and the tests
(``tests/model_files.py``) build their folders from these. Torch-free.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

Shape = tuple[int, ...]
Table = dict[str, tuple[Shape, str]]
"""Tensor name -> (shape, safetensors dtype name)."""

DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}

KEPT_DIMENSIONS: tuple[tuple[str, tuple[int, ...] | None], ...] = (
    ("model.diffusion_model.input_blocks.0.0.weight", (1,)),  # UNet input channels: inpainting
    ("attn2.to_k.weight", (1,)),  # cross-attention width: SD 1.x / 2.x / SDXL
    ("attn2.to_v.weight", (1,)),
    ("label_emb.0.0.weight", (1,)),  # SDXL base (2816) / refiner (2560)
    ("pos_embed", (1,)),  # SD3 (36864) / SD3.5 medium (147456)
    ("adaLN_modulation.1.bias", None),  # SD3's width x 6
    ("img_in.weight", (1,)),  # Flux dev (64) / fill (384) / depth (128)
    ("decoder.conv_in.weight", (1,)),  # VAE latent channels
    ("q_proj.weight", (1,)),  # CLIP width
    ("in_proj_weight", (1,)),  # OpenCLIP width
    ("SelfAttention.q.weight", (1,)),  # T5 width
)
"""Name suffixes whose dimensions ``write_safetensors`` keeps (``None``: all of them)."""

LORA_DOWNS = (".lora_down.weight", ".lora.down.weight", "_lora.down.weight", ".lora_A.weight")
LORA_READ_MODULES = (
    "attn2_to_k",  # cross-attention width: SD 1.x / 2.x / SDXL
    "attn2_to_v",
    "self_attn_q_proj",  # text-encoder width
    "self_attn_k_proj",
    "img_attn_qkv",  # transformer widths: Flux, SD3
    "x_block_attn_qkv",
    "attn_to_q",
    "attn_to_k",
    "attn_qkv",
    "linear1",
)
"""The LoRA modules whose down matrices keep their in-features (the rest shrink to 1)."""

SHRINK_ABOVE = 1_000_000
"""Tables of more elements than this are shrunk."""


def numel(shape: Shape) -> int:
    return math.prod(shape)


def shrunk(key: str, shape: Shape) -> Shape:
    """``shape`` with every dimension that detection does not read set to 1."""
    for down in LORA_DOWNS:
        if key.endswith(down):
            module = key[: -len(down)].replace(".", "_")
            keep = module.endswith(LORA_READ_MODULES)
            return tuple(n if keep and i == 1 else 1 for i, n in enumerate(shape))
    for suffix, kept in KEPT_DIMENSIONS:
        if key.endswith(suffix):
            if kept is None:
                return shape
            return tuple(n if i in kept else 1 for i, n in enumerate(shape))
    return tuple(1 for _ in shape)


def safetensors_bytes(
    table: Mapping[str, tuple[Shape, str]], metadata: Mapping[str, str] | None = None
) -> bytes:
    """A whole ``.safetensors`` file of zeros with exactly the tensors of ``table``."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for key, (shape, dtype) in table.items():
        size = numel(shape) * DTYPE_BYTES[dtype]
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def write_safetensors(
    path: Path,
    table: Mapping[str, tuple[Shape, str]],
    metadata: Mapping[str, str] | None = None,
    *,
    shrink: bool = True,
) -> Path:
    """Write ``table`` to ``path`` as a ``.safetensors`` file of zeros (shrunk, see the
    module docstring, unless ``shrink`` is False or the table is small); ``path``."""
    if shrink and sum(numel(shape) for shape, _ in table.values()) > SHRINK_ABOVE:
        table = {key: (shrunk(key, shape), dtype) for key, (shape, dtype) in table.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(safetensors_bytes(table, metadata))
    return path


class SafetensorsTemplate:
    """Many files of one (shrunk) table with different metadata, fast: the tensor part
    of the header is encoded once."""

    def __init__(self, table: Mapping[str, tuple[Shape, str]]) -> None:
        if sum(numel(shape) for shape, _ in table.values()) > SHRINK_ABOVE:
            table = {key: (shrunk(key, shape), dtype) for key, (shape, dtype) in table.items()}
        whole = safetensors_bytes(table)
        (length,) = struct.unpack("<Q", whole[:8])
        self.tensors = whole[8 : 8 + length].rstrip(b" ")[1:]  # the JSON object without its "{"
        self.data = len(whole) - 8 - length
        self.count = len(table)

    def render(self, metadata: Mapping[str, str]) -> bytes:
        raw = b'{"__metadata__":' + json.dumps(dict(metadata), separators=(",", ":")).encode() + b","
        raw += self.tensors
        raw += b" " * (-len(raw) % 8)
        return struct.pack("<Q", len(raw)) + raw + bytes(self.data)


class _Builder:
    def __init__(self, prefix: str, dtype: str) -> None:
        self.table: Table = {}
        self.prefix = prefix
        self.dtype = dtype

    def add(self, key: str, shape: Shape, dtype: str | None = None) -> None:
        self.table[self.prefix + key] = (shape, dtype or self.dtype)

    def linear(self, key: str, out: int, inp: int, bias: bool = True) -> None:
        self.add(f"{key}.weight", (out, inp))
        if bias:
            self.add(f"{key}.bias", (out,))

    def conv(self, key: str, out: int, inp: int, k: int = 3) -> None:
        self.add(f"{key}.weight", (out, inp, k, k))
        self.add(f"{key}.bias", (out,))

    def norm(self, key: str, width: int) -> None:
        self.add(f"{key}.weight", (width,))
        self.add(f"{key}.bias", (width,))


# --- the original SD UNet (LDM / SGM) -----------------------------------------------------


@dataclass(frozen=True)
class UNetShape:
    """The layout of an LDM UNet: widths per level, transformer blocks per level."""

    channels: int = 320
    mult: tuple[int, ...] = (1, 2, 4, 4)
    depth: tuple[int, ...] = (1, 1, 1, 0)
    middle_depth: int = 1
    linear: bool = False  # linear (SD 2.x, SDXL) or 1x1-conv (SD 1.x) proj_in / proj_out


SD1_UNET = UNetShape()
SD2_UNET = UNetShape(linear=True)
SDXL_UNET = UNetShape(mult=(1, 2, 4), depth=(0, 2, 10), middle_depth=10, linear=True)
REFINER_UNET = UNetShape(channels=384, depth=(0, 4, 4, 0), middle_depth=4, linear=True)


def ldm_unet(
    prefix: str = "model.diffusion_model.",
    shape: UNetShape = SD1_UNET,
    *,
    context: int = 768,
    in_channels: int = 4,
    adm: int | None = None,
    encoder_only: bool = False,
    dtype: str = "F16",
) -> Table:
    """An LDM ``UNetModel``'s tensors: SD 1.x by default; ``encoder_only`` stops after
    the middle block (a ControlNet's copy)."""
    b = _Builder(prefix, dtype)
    channels, mult, depth, linear = shape.channels, shape.mult, shape.depth, shape.linear
    time = channels * 4

    def res(key: str, cin: int, cout: int) -> None:
        b.norm(f"{key}.in_layers.0", cin)
        b.conv(f"{key}.in_layers.2", cout, cin)
        b.linear(f"{key}.emb_layers.1", cout, time)
        b.norm(f"{key}.out_layers.0", cout)
        b.conv(f"{key}.out_layers.3", cout, cout)
        if cin != cout:
            b.conv(f"{key}.skip_connection", cout, cin, 1)

    def transformer(key: str, ch: int, blocks: int) -> None:
        b.norm(f"{key}.norm", ch)
        proj = b.linear if linear else (lambda k, o, i: b.conv(k, o, i, 1))
        proj(f"{key}.proj_in", ch, ch)
        for n in range(blocks):
            block = f"{key}.transformer_blocks.{n}"
            for attn, kv in (("attn1", ch), ("attn2", context)):
                b.linear(f"{block}.{attn}.to_q", ch, ch, bias=False)
                b.linear(f"{block}.{attn}.to_k", ch, kv, bias=False)
                b.linear(f"{block}.{attn}.to_v", ch, kv, bias=False)
                b.linear(f"{block}.{attn}.to_out.0", ch, ch)
            b.linear(f"{block}.ff.net.0.proj", ch * 8, ch)
            b.linear(f"{block}.ff.net.2", ch, ch * 4)
            for norm in ("norm1", "norm2", "norm3"):
                b.norm(f"{block}.{norm}", ch)
        proj(f"{key}.proj_out", ch, ch)

    b.linear("time_embed.0", time, channels)
    b.linear("time_embed.2", time, time)
    if adm:
        b.linear("label_emb.0.0", time, adm)
        b.linear("label_emb.0.2", time, time)
    b.conv("input_blocks.0.0", channels, in_channels)
    skips, ch, n = [channels], channels, 1
    for level, m in enumerate(mult):
        for _ in range(2):
            res(f"input_blocks.{n}.0", ch, channels * m)
            ch = channels * m
            if depth[level]:
                transformer(f"input_blocks.{n}.1", ch, depth[level])
            skips.append(ch)
            n += 1
        if level != len(mult) - 1:
            b.conv(f"input_blocks.{n}.0.op", ch, ch)
            skips.append(ch)
            n += 1
    res("middle_block.0", ch, ch)
    transformer("middle_block.1", ch, shape.middle_depth)
    res("middle_block.2", ch, ch)
    if encoder_only:
        return b.table
    n = 0
    for level in reversed(range(len(mult))):
        for i in range(3):
            res(f"output_blocks.{n}.0", ch + skips.pop(), channels * mult[level])
            ch = channels * mult[level]
            index = 1
            if depth[level]:
                transformer(f"output_blocks.{n}.1", ch, depth[level])
                index = 2
            if level and i == 2:
                b.conv(f"output_blocks.{n}.{index}.conv", ch, ch)
            n += 1
    b.norm("out.0", ch)
    b.conv("out.2", 4, ch)
    return b.table


# --- VAEs -----------------------------------------------------------------------------------


def vae(
    prefix: str = "first_stage_model.", *, latent: int = 4, layout: str = "ldm", dtype: str = "F32"
) -> Table:
    """An ``AutoencoderKL``'s tensors in the original (``layout="ldm"``) or diffusers
    naming; 4 latent channels (SD, SDXL, with quant convs) or 16 (SD3, Flux, without)."""
    b = _Builder(prefix, dtype)
    ldm = layout == "ldm"
    mult = (1, 2, 4, 4)

    def res(key: str, cin: int, cout: int) -> None:
        b.norm(f"{key}.norm1", cin)
        b.conv(f"{key}.conv1", cout, cin)
        b.norm(f"{key}.norm2", cout)
        b.conv(f"{key}.conv2", cout, cout)
        if cin != cout:
            b.conv(f"{key}.{'nin_shortcut' if ldm else 'conv_shortcut'}", cout, cin, 1)

    def middle(part: str) -> None:
        mid = f"{part}.mid" if ldm else f"{part}.mid_block"
        res(f"{mid}.block_1" if ldm else f"{mid}.resnets.0", 512, 512)
        if ldm:
            b.norm(f"{mid}.attn_1.norm", 512)
            for name in ("q", "k", "v", "proj_out"):
                b.conv(f"{mid}.attn_1.{name}", 512, 512, 1)
        else:
            b.norm(f"{mid}.attentions.0.group_norm", 512)
            for name in ("to_q", "to_k", "to_v", "to_out.0"):
                b.linear(f"{mid}.attentions.0.{name}", 512, 512)
        res(f"{mid}.block_2" if ldm else f"{mid}.resnets.1", 512, 512)

    b.conv("encoder.conv_in", 128, 3)
    cin = 128
    for i, m in enumerate(mult):
        for j in range(2):
            res(
                f"encoder.down.{i}.block.{j}" if ldm else f"encoder.down_blocks.{i}.resnets.{j}", cin, 128 * m
            )
            cin = 128 * m
        if i != len(mult) - 1:
            b.conv(
                f"encoder.down.{i}.downsample.conv"
                if ldm
                else f"encoder.down_blocks.{i}.downsamplers.0.conv",
                cin,
                cin,
            )
    middle("encoder")
    b.norm("encoder.norm_out" if ldm else "encoder.conv_norm_out", 512)
    b.conv("encoder.conv_out", 2 * latent, 512)
    b.conv("decoder.conv_in", 512, latent)
    middle("decoder")
    cin = 512
    for up, i in enumerate(reversed(range(len(mult)))):
        for j in range(3):
            res(
                f"decoder.up.{i}.block.{j}" if ldm else f"decoder.up_blocks.{up}.resnets.{j}",
                cin,
                128 * mult[i],
            )
            cin = 128 * mult[i]
        if i:
            b.conv(
                f"decoder.up.{i}.upsample.conv" if ldm else f"decoder.up_blocks.{up}.upsamplers.0.conv",
                cin,
                cin,
            )
    b.norm("decoder.norm_out" if ldm else "decoder.conv_norm_out", 128)
    b.conv("decoder.conv_out", 3, 128)
    if latent == 4:
        b.conv("quant_conv", 8, 8, 1)
        b.conv("post_quant_conv", 4, 4, 1)
    return b.table


# --- text encoders --------------------------------------------------------------------------


def clip_text(
    prefix: str, width: int = 768, layers: int = 12, *, projection: bool = False, dtype: str = "F16"
) -> Table:
    """A transformers ``CLIPTextModel``'s tensors (CLIP-L: 768 x 12; CLIP-G: 1280 x 32)."""
    b = _Builder(prefix + "text_model.", dtype)
    b.add("embeddings.position_ids", (1, 77), "I64")
    b.add("embeddings.token_embedding.weight", (49408, width))
    b.add("embeddings.position_embedding.weight", (77, width))
    for i in range(layers):
        layer = f"encoder.layers.{i}"
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            b.linear(f"{layer}.self_attn.{name}", width, width)
        b.norm(f"{layer}.layer_norm1", width)
        b.linear(f"{layer}.mlp.fc1", width * 4, width)
        b.linear(f"{layer}.mlp.fc2", width, width * 4)
        b.norm(f"{layer}.layer_norm2", width)
    b.norm("final_layer_norm", width)
    table = b.table
    if projection:
        table[prefix + "text_projection.weight"] = ((width, width), dtype)
    return table


def open_clip_text(prefix: str, width: int, layers: int, *, dtype: str = "F16") -> Table:
    """An OpenCLIP text tower's tensors (SD 2.x: ViT-H 1024 x 24; SDXL: ViT-bigG 1280 x 32)."""
    b = _Builder(prefix, dtype)
    b.add("positional_embedding", (77, width))
    b.add("token_embedding.weight", (49408, width))
    for i in range(layers):
        block = f"transformer.resblocks.{i}"
        b.norm(f"{block}.ln_1", width)
        b.add(f"{block}.attn.in_proj_weight", (3 * width, width))
        b.add(f"{block}.attn.in_proj_bias", (3 * width,))
        b.linear(f"{block}.attn.out_proj", width, width)
        b.norm(f"{block}.ln_2", width)
        b.linear(f"{block}.mlp.c_fc", width * 4, width)
        b.linear(f"{block}.mlp.c_proj", width, width * 4)
    b.norm("ln_final", width)
    b.add("text_projection", (width, width))
    b.add("logit_scale", ())
    return b.table


def t5_encoder(prefix: str = "", *, width: int = 4096, layers: int = 24, dtype: str = "F16") -> Table:
    """A transformers ``T5EncoderModel``'s tensors (T5-XXL: 4096 x 24)."""
    b = _Builder(prefix, dtype)
    b.add("shared.weight", (32128, width))
    for i in range(layers):
        block = f"encoder.block.{i}.layer"
        for name in ("q", "k", "v", "o"):
            b.add(f"{block}.0.SelfAttention.{name}.weight", (4096, width))
        if i == 0:
            b.add(f"{block}.0.SelfAttention.relative_attention_bias.weight", (32, 64))
        b.add(f"{block}.0.layer_norm.weight", (width,))
        b.add(f"{block}.1.DenseReluDense.wi_0.weight", (10240, width))
        b.add(f"{block}.1.DenseReluDense.wi_1.weight", (10240, width))
        b.add(f"{block}.1.DenseReluDense.wo.weight", (width, 10240))
        b.add(f"{block}.1.layer_norm.weight", (width,))
    b.add("encoder.final_layer_norm.weight", (width,))
    return b.table


# --- transformers: SD3's MMDiT and Flux's -----------------------------------------------------


def mmdit(
    prefix: str = "model.diffusion_model.",
    *,
    width: int = 1536,
    depth: int = 24,
    positions: int = 36864,
    dual_blocks: int = 0,
    qk_norm: bool = False,
    dtype: str = "F16",
) -> Table:
    """SD3's MMDiT (SD3 medium by default; SD3.5 medium: 147456 positions, 13 dual-attention
    blocks and qk norms; SD3.5 large: width 2432, depth 38)."""
    b = _Builder(prefix, dtype)
    b.add("pos_embed", (1, positions, width))
    b.conv("x_embedder.proj", width, 16, 2)
    b.linear("t_embedder.mlp.0", width, 256)
    b.linear("t_embedder.mlp.2", width, width)
    b.linear("y_embedder.mlp.0", width, 2048)
    b.linear("y_embedder.mlp.2", width, width)
    b.linear("context_embedder", width, 4096)
    for i in range(depth):
        for part in ("context_block", "x_block"):
            block = f"joint_blocks.{i}.{part}"
            last = part == "context_block" and i == depth - 1
            dual = part == "x_block" and i < dual_blocks
            b.linear(f"{block}.adaLN_modulation.1", (2 if last else 9 if dual else 6) * width, width)
            for attn in ("attn", "attn2") if dual else ("attn",):
                b.linear(f"{block}.{attn}.qkv", 3 * width, width)
                if qk_norm:
                    b.add(f"{block}.{attn}.ln_q.weight", (64,))
                    b.add(f"{block}.{attn}.ln_k.weight", (64,))
                if not last:
                    b.linear(f"{block}.{attn}.proj", width, width)
            if not last:
                b.linear(f"{block}.mlp.fc1", 4 * width, width)
                b.linear(f"{block}.mlp.fc2", width, 4 * width)
    b.linear("final_layer.adaLN_modulation.1", 2 * width, width)
    b.linear("final_layer.linear", 64, width)
    return b.table


def flux_transformer(
    prefix: str = "model.diffusion_model.",
    *,
    guidance: bool = True,
    in_channels: int = 64,
    double: int = 19,
    single: int = 38,
    dtype: str = "BF16",
) -> Table:
    """Flux.1's transformer in BFL's naming (dev; schnell: no guidance; fill: 384 input
    channels; depth: 128)."""
    b = _Builder(prefix, dtype)
    w = 3072
    b.linear("img_in", w, in_channels)
    b.linear("time_in.in_layer", w, 256)
    b.linear("time_in.out_layer", w, w)
    b.linear("vector_in.in_layer", w, 768)
    b.linear("vector_in.out_layer", w, w)
    if guidance:
        b.linear("guidance_in.in_layer", w, 256)
        b.linear("guidance_in.out_layer", w, w)
    b.linear("txt_in", w, 4096)
    for i in range(double):
        for stream in ("img", "txt"):
            block = f"double_blocks.{i}.{stream}"
            b.linear(f"{block}_mod.lin", 6 * w, w)
            b.linear(f"{block}_attn.qkv", 3 * w, w)
            b.add(f"{block}_attn.norm.query_norm.scale", (128,))
            b.add(f"{block}_attn.norm.key_norm.scale", (128,))
            b.linear(f"{block}_attn.proj", w, w)
            b.linear(f"{block}_mlp.0", 4 * w, w)
            b.linear(f"{block}_mlp.2", w, 4 * w)
    for i in range(single):
        block = f"single_blocks.{i}"
        b.linear(f"{block}.linear1", 7 * w, w)
        b.linear(f"{block}.linear2", w, 5 * w)
        b.add(f"{block}.norm.query_norm.scale", (128,))
        b.add(f"{block}.norm.key_norm.scale", (128,))
        b.linear(f"{block}.modulation.lin", 3 * w, w)
    b.linear("final_layer.linear", 64, w)
    b.linear("final_layer.adaLN_modulation.1", 2 * w, w)
    return b.table


# --- whole checkpoints ------------------------------------------------------------------------

CHECKPOINTS = (
    "v1",
    "v2",
    "inpainting",
    "inpainting_v2",
    "instruct-pix2pix",
    "upscale",
    "xl_base",
    "xl_refiner",
    "xl_inpaint",
    "playground-v2-5",
    "sd3",
    "sd35_medium",
    "sd35_large",
    "flux-dev",
    "flux-schnell",
    "flux-fill",
    "flux-depth",
)
"""The architectures ``checkpoint`` builds, by diffusers' names."""


def checkpoint(
    architecture: str, *, bare: bool = False, unprefixed: bool = False, dtype: str = "F16"
) -> Table:
    """The tensors of a single-file checkpoint of ``architecture`` (one of
    ``CHECKPOINTS``) as its original release holds them: denoiser, VAE and text
    encoders; ``bare``: the denoiser only (ComfyUI's ``diffusion_models/``),
    ``unprefixed`` without ``model.diffusion_model.``."""
    prefix = "" if unprefixed else "model.diffusion_model."
    table: Table = {}
    if architecture in ("v1", "inpainting", "instruct-pix2pix", "upscale"):
        channels = {"inpainting": 9, "instruct-pix2pix": 8}.get(architecture, 4)
        table.update(ldm_unet(prefix, SD1_UNET, in_channels=channels, dtype=dtype))
        if architecture == "upscale":
            table[prefix + "input_blocks.10.0.skip_connection.bias"] = ((1280,), dtype)
        encoders = clip_text("cond_stage_model.transformer.", dtype=dtype)
    elif architecture in ("v2", "inpainting_v2"):
        channels = 9 if architecture == "inpainting_v2" else 4
        table.update(ldm_unet(prefix, SD2_UNET, context=1024, in_channels=channels, dtype=dtype))
        encoders = open_clip_text("cond_stage_model.model.", 1024, 24, dtype=dtype)
    elif architecture in ("xl_base", "xl_inpaint", "playground-v2-5"):
        channels = 9 if architecture == "xl_inpaint" else 4
        unet = ldm_unet(prefix, SDXL_UNET, context=2048, adm=2816, in_channels=channels, dtype=dtype)
        table.update(unet)
        encoders = clip_text("conditioner.embedders.0.transformer.", dtype=dtype)
        encoders.update(open_clip_text("conditioner.embedders.1.model.", 1280, 32, dtype=dtype))
        if architecture == "playground-v2-5":
            encoders["edm_mean"] = ((1, 4, 1, 1), "F32")
            encoders["edm_std"] = ((1, 4, 1, 1), "F32")
    elif architecture == "xl_refiner":
        table.update(ldm_unet(prefix, REFINER_UNET, context=1280, adm=2560, dtype=dtype))
        encoders = open_clip_text("conditioner.embedders.0.model.", 1280, 32, dtype=dtype)
    elif architecture in ("sd3", "sd35_medium", "sd35_large"):
        if architecture == "sd3":
            table.update(mmdit(prefix, dtype=dtype))
        elif architecture == "sd35_medium":
            table.update(mmdit(prefix, positions=147456, dual_blocks=13, qk_norm=True, dtype=dtype))
        else:
            table.update(mmdit(prefix, width=2432, depth=38, qk_norm=True, dtype=dtype))
        encoders = clip_text("text_encoders.clip_l.transformer.", dtype=dtype)
        encoders.update(
            clip_text("text_encoders.clip_g.transformer.", 1280, 32, projection=True, dtype=dtype)
        )
    elif architecture.startswith("flux-"):
        guidance = architecture != "flux-schnell"
        channels = {"flux-fill": 384, "flux-depth": 128}.get(architecture, 64)
        table.update(flux_transformer(prefix, guidance=guidance, in_channels=channels, dtype=dtype))
        encoders = clip_text("text_encoders.clip_l.transformer.", dtype=dtype)
        encoders.update(t5_encoder("text_encoders.t5xxl.transformer.", layers=2, dtype=dtype))
    else:
        raise ValueError(
            f"no checkpoint table for architecture {architecture!r}; known: {', '.join(CHECKPOINTS)}"
        )
    if bare:
        return table
    latent = 16 if architecture.startswith(("sd3", "flux")) else 4
    table.update(vae("first_stage_model.", latent=latent, dtype=dtype))
    table.update(encoders)
    return table


# --- LoRAs ----------------------------------------------------------------------------------

Module = tuple[str, str, int, int]
"""(component, module path in diffusers' naming, in-features, out-features)."""


def _unet_modules(base: str, sgm: bool) -> list[tuple[str, int, int, bool]]:
    """(path, in, out, conv) of the attention layers of an SD / SDXL UNet; ``sgm``: the
    original names (input_blocks...) kohya's SDXL LoRAs use."""
    context = {"sd1": 768, "sd2": 1024, "sdxl": 2048}[base]
    if base == "sdxl":
        places = [("down_blocks.1", 2, 640, 2), ("down_blocks.2", 2, 1280, 10), ("mid_block", 1, 1280, 10)]
        places += [("up_blocks.0", 3, 1280, 10), ("up_blocks.1", 3, 640, 2)]
        sgm_names = {
            "down_blocks.1": ["input_blocks.4.1", "input_blocks.5.1"],
            "down_blocks.2": ["input_blocks.7.1", "input_blocks.8.1"],
            "mid_block": ["middle_block.1"],
            "up_blocks.0": ["output_blocks.0.1", "output_blocks.1.1", "output_blocks.2.1"],
            "up_blocks.1": ["output_blocks.3.1", "output_blocks.4.1", "output_blocks.5.1"],
        }
    else:
        places = [("down_blocks.0", 2, 320, 1), ("down_blocks.1", 2, 640, 1), ("down_blocks.2", 2, 1280, 1)]
        places += [("mid_block", 1, 1280, 1), ("up_blocks.1", 3, 1280, 1), ("up_blocks.2", 3, 640, 1)]
        places += [("up_blocks.3", 3, 320, 1)]
        sgm_names = {}
    modules = []
    for block, count, ch, depth in places:
        for a in range(count):
            attention = sgm_names[block][a] if sgm else f"{block}.attentions.{a}"
            conv = base == "sd1"
            modules.append((f"{attention}.proj_in", ch, ch, conv))
            for t in range(depth):
                tb = f"{attention}.transformer_blocks.{t}"
                for attn, kv in (("attn1", ch), ("attn2", context)):
                    modules += [(f"{tb}.{attn}.to_q", ch, ch, False), (f"{tb}.{attn}.to_k", kv, ch, False)]
                    modules += [
                        (f"{tb}.{attn}.to_v", kv, ch, False),
                        (f"{tb}.{attn}.to_out.0", ch, ch, False),
                    ]
                modules += [(f"{tb}.ff.net.0.proj", ch, 8 * ch, False), (f"{tb}.ff.net.2", 4 * ch, ch, False)]
            modules.append((f"{attention}.proj_out", ch, ch, conv))
    return modules


def _text_modules(width: int, layers: int) -> list[tuple[str, int, int, bool]]:
    modules = []
    for i in range(layers):
        layer = f"text_model.encoder.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            modules.append((f"{layer}.self_attn.{name}", width, width, False))
        modules += [
            (f"{layer}.mlp.fc1", width, 4 * width, False),
            (f"{layer}.mlp.fc2", 4 * width, width, False),
        ]
    return modules


def _transformer_modules(base: str, bfl: bool) -> list[tuple[str, int, int, bool]]:
    if base == "flux":
        if bfl:
            modules = [
                (f"double_blocks.{i}.{s}_attn.{n}", 3072, out, False)
                for i in range(19)
                for s in ("img", "txt")
                for n, out in (("qkv", 9216), ("proj", 3072))
            ]
            modules += [(f"single_blocks.{i}.linear1", 3072, 21504, False) for i in range(38)]
            return modules
        modules = [
            (f"transformer_blocks.{i}.attn.{n}", 3072, 3072, False)
            for i in range(19)
            for n in (
                "to_q",
                "to_k",
                "to_v",
                "to_out.0",
                "add_q_proj",
                "add_k_proj",
                "add_v_proj",
                "to_add_out",
            )
        ]
        modules += [
            (f"single_transformer_blocks.{i}.attn.{n}", 3072, 3072, False)
            for i in range(38)
            for n in ("to_q", "to_k", "to_v")
        ]
        return modules
    width, depth = (2432, 38) if base == "sd35_large" else (1536, 24)
    if bfl:
        return [
            (f"joint_blocks.{i}.{part}.attn.qkv", width, 3 * width, False)
            for i in range(depth)
            for part in ("context_block", "x_block")
        ]
    return [
        (f"transformer_blocks.{i}.attn.{n}", width, width, False)
        for i in range(depth)
        for n in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj")
    ]


LORA_BASES = ("sd1", "sd2", "sdxl", "sd3", "sd35_large", "flux")
LORA_FORMATS = ("kohya", "diffusers", "diffusers-old", "peft", "ldm", "loha", "lokr")


def lora(
    base: str, fmt: str = "kohya", *, rank: int = 8, text_encoder: bool = True, dtype: str = "F16"
) -> Table:
    """A LoRA of ``base`` (one of ``LORA_BASES``) in format ``fmt`` (one of
    ``LORA_FORMATS``): kohya's sd-scripts (``lora_unet_*``, ``lora_te*_``, down/up/alpha),
    diffusers' (``unet.``/``transformer.`` and ``text_encoder*.``, ``lora_A``/``lora_B``;
    ``diffusers-old``: ``lora.down``/``lora.up``), peft's (``base_model.model.``, UNet or
    transformer only), ComfyUI/BFL's (``diffusion_model.``, transformers only), or
    LyCORIS' LoHa and LoKr (kohya names)."""
    if base not in LORA_BASES or fmt not in LORA_FORMATS:
        raise ValueError(f"no LoRA table for base {base!r} in format {fmt!r}")
    kohya_names = fmt in ("kohya", "loha", "lokr")
    modules: list[tuple[str, str, int, int, bool]] = []
    if base in ("sd1", "sd2", "sdxl"):
        sgm = kohya_names and base == "sdxl"
        modules += [("unet", *m) for m in _unet_modules(base, sgm)]
        if text_encoder and fmt not in ("peft", "ldm"):
            if base == "sdxl":
                modules += [("text_encoder", *m) for m in _text_modules(768, 12)]
                modules += [("text_encoder_2", *m) for m in _text_modules(1280, 32)]
            else:
                width, layers = (768, 12) if base == "sd1" else (1024, 23)
                modules += [("text_encoder", *m) for m in _text_modules(width, layers)]
    else:
        modules += [("transformer", *m) for m in _transformer_modules(base, kohya_names or fmt == "ldm")]
    b = _Builder("", dtype)
    kohya_prefix = {
        "unet": "lora_unet_",
        "transformer": "lora_unet_",
        "text_encoder": "lora_te1_" if base == "sdxl" else "lora_te_",
        "text_encoder_2": "lora_te2_",
    }
    for component, path, inp, out, conv in modules:
        down: Shape = (rank, inp, 1, 1) if conv else (rank, inp)
        up: Shape = (out, rank, 1, 1) if conv else (out, rank)
        if kohya_names:
            name = kohya_prefix[component] + path.replace(".", "_")
            if fmt == "kohya":
                b.add(f"{name}.lora_down.weight", down)
                b.add(f"{name}.lora_up.weight", up)
            elif fmt == "loha":
                for w in ("w1", "w2"):
                    b.add(f"{name}.hada_{w}_a", (out, rank))
                    b.add(f"{name}.hada_{w}_b", (rank, inp))
            else:
                b.add(f"{name}.lokr_w1", (4, 4))
                b.add(f"{name}.lokr_w2", (max(out // 4, 1), max(inp // 4, 1)))
            b.add(f"{name}.alpha", ())
        else:
            where = {
                "diffusers": f"{component}.{path}",
                "diffusers-old": f"{component}.{path}.lora",
                "peft": f"base_model.model.{path}",
                "ldm": f"diffusion_model.{path}",
            }[fmt]
            down_name, up_name = ("down", "up") if fmt == "diffusers-old" else ("lora_A", "lora_B")
            b.add(f"{where}.{down_name}.weight", down)
            b.add(f"{where}.{up_name}.weight", up)
    return b.table


# --- embeddings, ControlNets ------------------------------------------------------------------


def embedding(fmt: str = "a1111", *, width: int = 768, vectors: int = 4) -> Table:
    """A textual-inversion embedding's tensors: ``a1111`` (``emb_params``, as A1111 saves
    ``.safetensors``; its ``.pt`` holds ``string_to_param.*``), ``sdxl`` (``clip_l`` 768 and
    ``clip_g`` 1280), ``diffusers`` (``{"<token>": vector}``)."""
    if fmt == "sdxl":
        return {"clip_l": ((vectors, 768), "F32"), "clip_g": ((vectors, 1280), "F32")}
    if fmt == "diffusers":
        return {"<token>": ((width,), "F32")}
    return {"emb_params": ((vectors, width), "F32")}


def controlnet(base: str = "sd1", fmt: str = "ldm", *, dtype: str = "F16") -> Table:
    """A ControlNet's tensors: ``ldm`` (``control_model.*``, as lllyasviel's releases) or
    ``diffusers`` (``ControlNetModel``'s ``diffusion_pytorch_model.safetensors``)."""
    context = {"sd1": 768, "sd2": 1024, "sdxl": 2048}[base]
    if fmt == "ldm":
        shape = {"sd1": SD1_UNET, "sd2": SD2_UNET, "sdxl": SDXL_UNET}[base]
        adm = 2816 if base == "sdxl" else None
        table = ldm_unet("control_model.", shape, context=context, adm=adm, encoder_only=True, dtype=dtype)
        b = _Builder("control_model.", dtype)
        for i, (out, inp) in enumerate(
            [(16, 3), (16, 16), (32, 16), (32, 32), (96, 32), (96, 96), (256, 96), (320, 256)]
        ):
            b.conv(f"input_hint_block.{2 * i}", out, inp)
        for i in range(12 if base != "sdxl" else 9):
            b.conv(f"zero_convs.{i}.0", 320, 320, 1)
        b.conv("middle_block_out.0", 1280, 1280, 1)
        table.update(b.table)
        return table
    b = _Builder("", dtype)
    b.conv("conv_in", 320, 4)
    b.conv("controlnet_cond_embedding.conv_in", 16, 3)
    b.conv("controlnet_cond_embedding.conv_out", 320, 256)
    b.linear("time_embedding.linear_1", 1280, 320)
    if base == "sdxl":
        b.linear("add_embedding.linear_1", 1280, 2816)
    first = "down_blocks.1" if base == "sdxl" else "down_blocks.0"
    for block in (first, "mid_block"):
        ch = 640 if block == "down_blocks.1" else 320 if block == "down_blocks.0" else 1280
        tb = f"{block}.attentions.0.transformer_blocks.0"
        b.linear(f"{tb}.attn1.to_k", ch, ch, bias=False)
        b.linear(f"{tb}.attn2.to_k", ch, context, bias=False)
        b.linear(f"{tb}.attn2.to_v", ch, context, bias=False)
        b.norm(f"{block}.attentions.0.norm", ch)
    for i in range(12):
        b.conv(f"controlnet_down_blocks.{i}", 320, 320, 1)
    b.conv("controlnet_mid_block", 1280, 1280, 1)
    return b.table
