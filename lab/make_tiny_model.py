#!/usr/bin/env python3
"""Generate a tiny, deterministic LlamaForCausalLM test model that vLLM can serve.

The model has random weights (it produces nonsense), a byte-level BPE tokenizer
trained on generated text, and every file vLLM / transformers need to load it
offline: config.json, generation_config.json, model.safetensors, tokenizer.json,
tokenizer_config.json and special_tokens_map.json.

Only numpy, safetensors and tokenizers are used (no torch, no transformers).

Properties the deployment relies on:
* deterministic: the same arguments always give byte-identical files;
* idempotent: if DIR already holds exactly these files nothing is touched
  (prints "unchanged"), otherwise the model is rebuilt (prints "written");
* atomic: files are written to a temporary folder next to DIR, fsynced and
  renamed into place, so a half-written model is never visible under DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# Rust-side thread pool of `tokenizers`: one thread keeps training reproducible
# and quiet. Must be set before the library is imported.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from safetensors.numpy import save as safetensors_save
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD]  # ids 0, 1, 2, 3 (Llama convention for unk/bos/eos)

HIDDEN_SIZE = 128
NUM_HEADS = 4  # head_dim 32: the CPU attention backend needs head_dim >= 32
NUM_KV_HEADS = 4
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS
NUM_LAYERS = 2
INTERMEDIATE_SIZE = 256
MAX_POSITIONS = 512
RMS_NORM_EPS = 1e-6
ROPE_THETA = 10000.0
INIT_STD = 0.02

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

WORDS = (  # noqa: SIM905 (one string reads better than 130 list items)
    "the a an and or but if then else when while for with without of to in on at by from "
    "hello world model server request response token prompt answer question system user "
    "assistant health metric latency queue cache memory core thread process service deploy "
    "ansible systemd python vllm llama tiny test check ready start stop restart fail error "
    "ok yes no one two three four five six seven eight nine ten zero red green blue fast slow "
    "small large big little good bad new old first last next every some any all none is are "
    "was were be been has have had do does did can could will would should may might must "
    "I you he she it we they this that these those here there what which who how why where"
).split()
PUNCTUATION = (".", "!", "?", ",", ":", ";")


def generate_corpus(rng: np.random.Generator, lines: int) -> list[str]:
    """Return deterministic pseudo-English lines (plus digits and chat markers)."""
    corpus: list[str] = []
    for i in range(lines):
        n = int(rng.integers(3, 16))
        picks = rng.integers(0, len(WORDS), size=n)
        words = [WORDS[int(p)] for p in picks]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        sentence = " ".join(words) + PUNCTUATION[int(rng.integers(0, len(PUNCTUATION)))]
        if i % 7 == 0:
            sentence += f" {int(rng.integers(0, 100000))}"
        if i % 11 == 0:
            role = ("user", "assistant", "system")[i % 3]
            sentence = f"<|{role}|>\n{sentence}"
        corpus.append(sentence)
    return corpus


def train_tokenizer(corpus: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=UNK, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    for index, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != index:
            raise RuntimeError(f"special token {token!r} did not get id {index}")
    # Prepend <s> like Llama tokenizers do; ByteLevel offsets for the rest.
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A",
                pair=f"{BOS} $A {BOS} $B",
                special_tokens=[(BOS, SPECIAL_TOKENS.index(BOS))],
            ),
        ]
    )
    return tokenizer


def make_weights(rng: np.random.Generator, vocab_size: int) -> dict[str, np.ndarray]:
    """Random float32 weights with the Hugging Face Llama parameter names."""

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD)).astype(
            np.float32
        )

    def ones(size: int) -> np.ndarray:
        return np.ones(size, dtype=np.float32)

    kv_dim = NUM_KV_HEADS * HEAD_DIM
    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(vocab_size, HIDDEN_SIZE)}
    for layer in range(NUM_LAYERS):
        prefix = f"model.layers.{layer}"
        tensors[f"{prefix}.input_layernorm.weight"] = ones(HIDDEN_SIZE)
        tensors[f"{prefix}.self_attn.q_proj.weight"] = normal(NUM_HEADS * HEAD_DIM, HIDDEN_SIZE)
        tensors[f"{prefix}.self_attn.k_proj.weight"] = normal(kv_dim, HIDDEN_SIZE)
        tensors[f"{prefix}.self_attn.v_proj.weight"] = normal(kv_dim, HIDDEN_SIZE)
        tensors[f"{prefix}.self_attn.o_proj.weight"] = normal(HIDDEN_SIZE, NUM_HEADS * HEAD_DIM)
        tensors[f"{prefix}.post_attention_layernorm.weight"] = ones(HIDDEN_SIZE)
        tensors[f"{prefix}.mlp.gate_proj.weight"] = normal(INTERMEDIATE_SIZE, HIDDEN_SIZE)
        tensors[f"{prefix}.mlp.up_proj.weight"] = normal(INTERMEDIATE_SIZE, HIDDEN_SIZE)
        tensors[f"{prefix}.mlp.down_proj.weight"] = normal(HIDDEN_SIZE, INTERMEDIATE_SIZE)
    tensors["model.norm.weight"] = ones(HIDDEN_SIZE)
    tensors["lm_head.weight"] = normal(vocab_size, HIDDEN_SIZE)
    return tensors


def dump_json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def build_files(seed: int, vocab_size: int, corpus_lines: int) -> dict[str, bytes]:
    """Return {file name: content} of the complete model folder."""
    rng = np.random.default_rng(seed)
    tokenizer = train_tokenizer(generate_corpus(rng, corpus_lines), vocab_size)
    actual_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    bos_id, eos_id, pad_id = (SPECIAL_TOKENS.index(t) for t in (BOS, EOS, PAD))

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN_SIZE,
        "initializer_range": INIT_STD,
        "intermediate_size": INTERMEDIATE_SIZE,
        "max_position_embeddings": MAX_POSITIONS,
        "mlp_bias": False,
        "num_attention_heads": NUM_HEADS,
        "num_hidden_layers": NUM_LAYERS,
        "num_key_value_heads": NUM_KV_HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_scaling": None,
        "rope_theta": ROPE_THETA,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": actual_vocab,
    }
    generation_config = {
        "_from_model_config": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
    }
    added_tokens_decoder = {
        str(i): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, token in enumerate(SPECIAL_TOKENS)
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added_tokens_decoder,
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "padding_side": "left",
    }
    special_tokens_map = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD}
    tokenizer_json = json.loads(tokenizer.to_str())
    weights = safetensors_save(make_weights(rng, actual_vocab), metadata={"format": "pt"})
    return {
        "config.json": dump_json(config),
        "generation_config.json": dump_json(generation_config),
        "model.safetensors": weights,
        "special_tokens_map.json": dump_json(special_tokens_map),
        "tokenizer.json": dump_json(tokenizer_json),
        "tokenizer_config.json": dump_json(tokenizer_config),
    }


def is_up_to_date(output: Path, files: dict[str, bytes], mode: int) -> bool:
    if not output.is_dir() or output.is_symlink():
        return False
    if output.stat().st_mode & 0o7777 != dir_mode(mode):
        return False
    if sorted(p.name for p in output.iterdir()) != sorted(files):
        return False
    for name, content in files.items():
        path = output / name
        if path.is_symlink() or not path.is_file() or path.stat().st_mode & 0o7777 != mode:
            return False
        if path.read_bytes() != content:
            return False
    return True


def dir_mode(mode: int) -> int:
    """Folder mode matching a file mode: search permission wherever read is given."""
    return mode | ((mode & 0o444) >> 2)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(output: Path, files: dict[str, bytes], mode: int) -> None:
    """Write all files into a temp folder beside OUTPUT, then rename it into place."""
    parent = output.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.new-", dir=parent))
    try:
        for name, content in sorted(files.items()):
            with open(staging / name, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(staging / name, mode)
        os.chmod(staging, dir_mode(mode))
        fsync_dir(staging)
        if output.exists() or output.is_symlink():
            # A directory cannot be replaced by rename(2) unless it is empty: move
            # the old one aside first. DIR briefly does not exist, but it never
            # holds a partial model.
            retired = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=parent))
            os.rename(output, retired / "model")
            os.rename(staging, output)
            shutil.rmtree(retired)
        else:
            os.rename(staging, output)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Generate a tiny random-weight LlamaForCausalLM (hidden 128, 4 heads of 32, "
            "2 layers) with a byte-level BPE tokenizer, for serving tests with vLLM. "
            "Deterministic, idempotent, atomic. Prints 'written DIR' or 'unchanged DIR'."
        )
    )
    parser.add_argument(
        "--output", required=True, type=Path, metavar="DIR", help="model folder to create or update"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1234,
        help="seed for text, tokenizer and weights (default: %(default)s)",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=512,
        help="BPE vocabulary size target, 300-1024 (default: %(default)s)",
    )
    parser.add_argument(
        "--corpus-lines",
        type=int,
        default=4000,
        help="lines of generated training text (default: %(default)s)",
    )
    parser.add_argument(
        "--mode",
        type=lambda s: int(s, 8),
        default=0o644,
        help="octal file mode of the written files (default: 0644)",
    )
    args = parser.parse_args(argv)
    if not 300 <= args.vocab_size <= 1024:
        parser.error("--vocab-size must be between 300 and 1024")
    if args.corpus_lines < 100:
        parser.error("--corpus-lines must be at least 100")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output: Path = args.output.absolute()
    files = build_files(args.seed, args.vocab_size, args.corpus_lines)
    if is_up_to_date(output, files, args.mode):
        print(f"unchanged {output}")
        return 0
    write_atomically(output, files, args.mode)
    print(f"written {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
