"""Tiny random-init checkpoints of the real model families, written like hub checkpoints.

Nothing can be downloaded here, yet evaluation, probing and LoRA must load models exactly as
they load `Qwen/Qwen2.5-VL-7B-Instruct` or `llava-hf/llava-onevision-qwen2-7b-ov-hf`: with
`from_pretrained(<dir>)`. So each checkpoint uses the family's real config, model, tokenizer,
processor classes, special tokens, chat template and visual-token geometry; only the widths,
depths and the vocabulary are small. The sizes live in `hiertrain/vlm/tiny_sizes/<arch>.yaml`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from hiertrain.base.errors import HierError

if TYPE_CHECKING:
    from transformers import Qwen2Tokenizer

ARCHS = ("qwen2_5_vl", "llava_onevision", "internvl", "clip")
CONFIG_DIR = Path(__file__).resolve().parent / "tiny_sizes"
OPTION_LETTERS = "ABCDEFGHIJ"

# The official chat templates (Qwen/Qwen2.5-VL-*-Instruct chat_template.json and the one the
# transformers LLaVA-OneVision conversion script writes to llava-hf/*-ov-hf).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The transformers InternVL conversion script's template (OpenGVLab/InternVL3-*-hf).
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2.5 special tokens in their real order (ids 151643.. upstream; here right after the BPE vocab).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)  # fmt: skip
# llava-hf's Qwen2 tokenizer: the Qwen2 base specials plus <image> and <video>.
LLAVA_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
# InternVL-hf's tokenizer: Qwen2 base specials plus the image/video tokens its processor names.
INTERNVL_NAMED_TOKENS = {
    "start_image_token": "<img>", "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>",
}  # fmt: skip
INTERNVL_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *INTERNVL_NAMED_TOKENS.values())

# Text the BPE merges are learned from: chat scaffolding, the paper's prompt phrasing, taxonomy
# words (birds, plants, the synthetic shapes), common English. Byte-level BPE encodes any text;
# this only decides which strings become short token sequences.
_CORPUS = """
system user assistant You are a helpful assistant. You are an expert in hierarchical image
classification. Given an image, classify it at its current hierarchy level by selecting the most
appropriate option from the provided choices (labeled with letters). Respond with only the
corresponding letter. Answer with the option's letter from the given choices directly.
Based on taxonomy, what is the order of the bird in this image? Based on the image, what is the
taxonomic classification at the family level? What is the taxonomic classification of the bird in
this image? How can the plant in this image be categorized taxonomically? What is the systematic
position of the animal shown in the image? Based on taxonomy, where does it fall in terms of genus?
Given the species, what is its taxonomic classification at the class level? What could it be
classified as? How can it be taxonomically categorized? What is the systematic position of it in
the biological classification hierarchy? kingdom phylum class order family genus species
subspecies variety domain level depth root leaf node parent child ancestor label image option
choice answer question letter hierarchy taxonomy taxonomic consistent accuracy
Animalia Plantae Fungi Chordata Arthropoda Aves Mammalia Reptilia Insecta Magnoliopsida
Liliopsida Passeriformes Piciformes Anseriformes Charadriiformes Procellariiformes Pelecaniformes
Suliformes Cuculiformes Caprimulgiformes Coraciiformes Apodiformes Gaviiformes Podicipediformes
Laridae Parulidae Icteridae Passerellidae Tyrannidae Vireonidae Hirundinidae Corvidae Picidae
Anatidae Alcedinidae Trochilidae Fringillidae Cardinalidae Mimidae Sturnidae Troglodytidae
Albatross Auklet Blackbird Bunting Cardinal Catbird Cormorant Cowbird Crow Cuckoo Flycatcher
Frigatebird Fulmar Goldfinch Grebe Grosbeak Gull Hummingbird Jay Kingbird Kingfisher Lark
Mallard Meadowlark Merganser Mockingbird Nighthawk Nuthatch Oriole Pelican Puffin Raven Shrike
Sparrow Swallow Tanager Tern Thrasher Vireo Warbler Waterthrush Woodpecker Wren Yellowthroat
Black footed Laysan Sooty Crested Least Parakeet Rhinoceros Brewer Red winged Rusty Yellow headed
Indigo Lazuli Painted Gray Eastern Western American Common Northern Florida Fish Pacific Great
Rosaceae Asteraceae Fabaceae Poaceae Orchidaceae Quercus Rosa Pinus Acer Salix Prunus Malus
shape family round angular curved circle square triangle star hexagon ellipse diamond cross
colour color red green blue yellow orange purple black white gray brown pink cyan magenta
texture plain striped dotted checked solid hatched noisy grid smooth rough spotted banded
the a an of in on at to is it its this that what which where how with from for by as be can
and or not no yes one two three four five six seven eight nine ten first second third
"""


def make_tiny(arch: str, out: str | Path, seed: int = 0, overrides: dict[str, Any] | None = None) -> Path:
    """Write a tiny random-init checkpoint of `arch` into `out` (created; must be empty).

    `overrides` is merged into the size config (nested mappings merge key by key), e.g.
    ``{"text": {"num_hidden_layers": 28}}`` for a model as deep as Qwen2.5-VL-7B.
    """
    if arch not in ARCHS:
        raise HierError(f"unknown tiny arch '{arch}': choose one of {', '.join(ARCHS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HierError(f"{out}: output path is a file, not a directory")
    if out.exists() and any(out.iterdir()):
        raise HierError(f"{out}: output directory exists and is not empty")
    sizes = _merge_sizes(tiny_sizes(arch), overrides or {}, f"{CONFIG_DIR / arch}.yaml")
    out.mkdir(parents=True, exist_ok=True)
    builders = {
        "qwen2_5_vl": _make_qwen2_5_vl, "llava_onevision": _make_llava_onevision,
        "internvl": _make_internvl, "clip": _make_clip,
    }  # fmt: skip
    try:
        builders[arch](out, seed, sizes)
    except KeyError as err:
        raise HierError(f"{CONFIG_DIR / arch}.yaml: missing setting {err}") from err
    return out


def tiny_sizes(arch: str) -> dict[str, Any]:
    """The size settings of `arch` from hiertrain/vlm/tiny_sizes/<arch>.yaml."""
    path = CONFIG_DIR / f"{arch}.yaml"
    if not path.is_file():
        raise HierError(f"{path}: tiny size config missing")
    with path.open(encoding="utf-8") as f:
        sizes = yaml.safe_load(f)
    if not isinstance(sizes, dict):
        raise HierError(f"{path}: expected a mapping of size settings")
    return sizes


def _merge_sizes(sizes: dict[str, Any], overrides: dict[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """`sizes` with `overrides` merged in; a top-level key the config lacks is a typo, not a setting."""
    merged = dict(sizes)
    for key, value in overrides.items():
        if not prefix and key not in sizes:
            raise HierError(f"{source}: unknown size setting '{key}' in overrides")
        if isinstance(value, dict) and isinstance(sizes.get(key), dict):
            merged[key] = _merge_sizes(sizes[key], value, source, f"{prefix}{key}.")
        else:
            merged[key] = value
    return merged


def build_tokenizer(
    special_tokens: tuple[str, ...],
    max_vocab: int,
    eos_token: str,
    named_tokens: dict[str, str] | None = None,
    corpus: str = "",
) -> Qwen2Tokenizer:
    """A Qwen2Tokenizer with a byte-level BPE learned from `_CORPUS` and the family's specials.

    The pre-tokenizer, normalizer and decoder are the real Qwen2 ones (taken from the class), so
    tokenization behaves like Qwen's, just with fewer merges. Every option letter is forced to
    be one token with and without a leading space, since evaluation reads letter logits.
    `named_tokens` (attribute name -> token, e.g. InternVL's `context_image_token`) become the
    tokenizer's named extra special tokens, which some processors read. `corpus` replaces the
    built-in text (the calibration organism learns its own invented words as whole tokens).
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    reference = Qwen2Tokenizer().backend_tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = reference.normalizer
    bpe.pre_tokenizer = reference.pre_tokenizer
    bpe.decoder = reference.decoder
    letters = [f"{c}. {c}) ({c}) Answer: {c}\n{c}" for c in OPTION_LETTERS]
    trainer = trainers.BpeTrainer(
        vocab_size=max_vocab - len(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = corpus or _CORPUS
    bpe.train_from_iterator([" ".join(text.split()), text, *letters], trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m) for m in model["merges"]]
    for letter in OPTION_LETTERS:
        if "Ġ" + letter not in vocab:  # "Ġ" is the byte-level space
            vocab["Ġ" + letter] = len(vocab)
            merges.append(("Ġ", letter))
    for token in special_tokens:
        vocab[token] = len(vocab)
    extra = [t for t in special_tokens if t not in ("<|endoftext|>", eos_token)]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=eos_token,
        pad_token="<|endoftext|>",
        extra_special_tokens=named_tokens or extra,
        model_max_length=32768,
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens], special_tokens=True)
    return tokenizer


def _seeded_init(seed: int, build: Callable[[], Any]) -> Any:
    """Build a model under `seed` without disturbing the caller's global RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _pad_vocab(n: int, multiple: int) -> int:
    # Real checkpoints pad the embedding past the tokenizer (Qwen: 151936 rows, 151665 tokens).
    return -(-n // multiple) * multiple


def _text_config(sizes: dict[str, Any], tokenizer, vocab_size: int) -> dict[str, Any]:
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return {
        **sizes["text"],
        "vocab_size": vocab_size,
        "bos_token_id": pad,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }


def _generation_config(tokenizer):
    from transformers import GenerationConfig

    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # Greedy, unlike the hub's sampling defaults, so tiny-model runs are reproducible.
    return GenerationConfig(bos_token_id=end, eos_token_id=[eos, end], pad_token_id=end, do_sample=False)


def _make_qwen2_5_vl(out: Path, seed: int, sizes: dict[str, Any]) -> None:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = build_tokenizer(QWEN_SPECIAL_TOKENS, sizes["tokenizer_max_vocab"], eos_token="<|im_end|>")
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids
    text = _text_config(sizes, tokenizer, _pad_vocab(len(tokenizer), sizes["vocab_multiple"]))
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    mrope = list(sizes["mrope_section"])
    if sum(mrope) * 2 != head_dim:
        raise HierError(f"qwen2_5_vl.yaml: mrope_section {mrope} must sum to head_dim/2 = {head_dim // 2}")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope}
    vision = {**sizes["vision"], "out_hidden_size": text["hidden_size"]}
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    model = _seeded_init(seed, lambda: Qwen2_5_VLForConditionalGeneration(config))
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    pixels = {"min_pixels": sizes["min_pixels"], "max_pixels": sizes["max_pixels"]}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)


def _make_llava_onevision(out: Path, seed: int, sizes: dict[str, Any]) -> None:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tokenizer = build_tokenizer(LLAVA_SPECIAL_TOKENS, sizes["tokenizer_max_vocab"], eos_token="<|im_end|>")
    tokenizer.chat_template = LLAVA_ONEVISION_CHAT_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids
    rows = _pad_vocab(len(tokenizer), sizes["vocab_multiple"])
    text = {"model_type": "qwen2", **_text_config(sizes, tokenizer, rows)}
    vision = {"model_type": "siglip_vision_model", "vision_use_head": False, **sizes["vision"]}
    config = LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=ids("<image>"),
        video_token_index=ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
    )
    model = _seeded_init(seed, lambda: LlavaOnevisionForConditionalGeneration(config))
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    side = vision["image_size"]
    siglip = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size={"height": side, "width": side},
            image_grid_pinpoints=config.image_grid_pinpoints,
            **siglip,
        ),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size={"height": side, "width": side}, **siglip),
        num_image_tokens=(side // vision["patch_size"]) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)


def _make_internvl(out: Path, seed: int, sizes: dict[str, Any]) -> None:
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    tokenizer = build_tokenizer(
        INTERNVL_SPECIAL_TOKENS, sizes["tokenizer_max_vocab"], eos_token="<|im_end|>", named_tokens=INTERNVL_NAMED_TOKENS
    )
    tokenizer.chat_template = INTERNVL_CHAT_TEMPLATE
    rows = _pad_vocab(len(tokenizer), sizes["vocab_multiple"])
    text = {"model_type": "qwen2", **_text_config(sizes, tokenizer, rows)}
    vision = dict(sizes["vision"])
    side, patch = vision.pop("image_size"), vision.pop("patch_size")
    downsample = 0.5
    tokens_per_tile = int((side // patch * downsample) ** 2)
    config = InternVLConfig(
        text_config=text,
        vision_config={**vision, "image_size": [side, side], "patch_size": [patch, patch]},
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=tokens_per_tile,
        downsample_ratio=downsample,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    model = _seeded_init(seed, lambda: InternVLForConditionalGeneration(config))
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    imagenet = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size={"height": side, "width": side}, crop_to_patches=True, min_patches=1,
            max_patches=sizes["max_patches"], **imagenet,
        ),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size={"height": side, "width": side}, **imagenet),
        image_seq_length=tokens_per_tile,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )  # fmt: skip
    processor.save_pretrained(out)


def _make_clip(out: Path, seed: int, sizes: dict[str, Any]) -> None:
    import open_clip
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from safetensors.torch import save_file

    model_cfg = {"embed_dim": sizes["embed_dim"], "vision_cfg": sizes["vision_cfg"], "text_cfg": sizes["text_cfg"]}
    model = _seeded_init(seed, lambda: open_clip.CLIP(**model_cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / HF_SAFE_WEIGHTS_NAME))
    # The hf-hub layout open_clip reads back with `local-dir:`; no hf_tokenizer_name, so the
    # tokenizer is open_clip's SimpleTokenizer whose BPE ships inside the package.
    preprocess = {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD)}
    (out / HF_CONFIG_NAME).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2))
