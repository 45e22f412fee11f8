"""The tokenizer that feeds the text encoders (:mod:`entitwist.models.text`).

:class:`Tokenizer` turns sentences into exactly ``max_tokens`` ids (padded with 0, mask 1 on
real tokens). It wraps the *slow-path-free* transformers 5 classes carefully: a vocabulary is
always given as a dict to ``BertTokenizer(vocab=...)`` (``BertTokenizerFast(vocab_file=...)``
silently ignores the file in transformers 5 and maps every word to [UNK]).
:func:`build_tokenizer` builds the one a :class:`~entitwist.config.TextConfig` implies.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from entitwist.config import TextConfig
from entitwist.errors import ConfigError, InputError

__all__ = [
    "TINY_VOCAB",
    "Tokenizer",
    "build_tokenizer",
    "hub_failure",
    "is_local_source",
    "read_vocab",
]

TINY_VOCAB = Path(__file__).resolve().parent.parent / "assets" / "tiny_vocab.txt"

_TRUNCATION_WARNED = False


def _reset_truncation_warning() -> None:
    """Let the next truncation warn again (tests)."""
    global _TRUNCATION_WARNED
    _TRUNCATION_WARNED = False


def hub_failure(what: str, source: str, exc: Exception) -> ConfigError:
    """The one-line error for a tokenizer or encoder that could not be loaded from a hub id."""
    if what == "tokenizer":
        fix = "pass a local directory as text__pretrained, or a vocab.txt / tokenizer folder as text__vocab"
    else:
        fix = "pass a local directory as text__pretrained, or text__pretrained=None for random weights"
    return ConfigError(
        f"could not load the {what} {source!r} ({type(exc).__name__}: no network or not in the local cache?); {fix}"
    )


def is_local_source(source: str) -> bool:
    """Whether ``source`` is a local directory (else a hub id)."""
    return os.path.isdir(os.path.expanduser(source))


def read_vocab(path: str | Path) -> dict[str, int]:
    """Read a BERT ``vocab.txt`` (one token a line, id = line number)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"vocabulary file {str(path)!r} does not exist; give a vocab.txt path or 'tiny'"
        )
    vocab: dict[str, int] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        token = line.rstrip("\n")
        if token and token not in vocab:
            vocab[token] = i
    if "[PAD]" not in vocab or "[UNK]" not in vocab:
        raise ConfigError(
            f"vocabulary {str(path)!r} lacks [PAD] or [UNK]; it is not a BERT vocab.txt"
        )
    return vocab


class Tokenizer:
    """Sentences -> fixed-length token ids for the text encoder.

    ``tokenizer(["the car on the left", ...])`` returns ``{"input_ids": (B, N) long,
    "attention_mask": (B, N) long}`` with N = ``max_tokens`` exactly: [CLS]/BOS first,
    [SEP]/EOS last, padded with id 0 and mask 0. Longer sentences are truncated (the end
    token is kept) with one warning per process naming the limit. An empty or blank sentence
    raises :class:`InputError`.

    Args:
        backend: a transformers tokenizer (``BertTokenizer`` or ``CLIPTokenizer``).
        max_tokens: N.
        kind: ``"bert"`` or ``"clip"``.
    """

    def __init__(self, backend: Any, max_tokens: int = 20, kind: str = "bert") -> None:
        if max_tokens < 2:
            raise ConfigError(f"max_tokens={max_tokens} must be at least 2")
        self.backend = backend
        self.max_tokens = int(max_tokens)
        self.kind = kind

    @property
    def vocab_size(self) -> int:
        return len(self.backend)

    def encode(self, sentence: str) -> list[int]:
        """Token ids of one sentence with its start and end tokens, not padded or truncated."""
        if not isinstance(sentence, str):
            raise InputError(f"expected a sentence string, got {type(sentence).__name__}")
        if not sentence.strip():
            raise InputError(
                "empty referring expression; give a sentence such as 'the car on the left'"
            )
        ids = self.backend(sentence, add_special_tokens=True, truncation=False)["input_ids"]
        return [int(i) for i in ids]

    def __call__(self, sentences: str | Sequence[str]) -> dict[str, torch.Tensor]:
        global _TRUNCATION_WARNED
        if isinstance(sentences, str):
            sentences = [sentences]
        if len(sentences) == 0:
            raise InputError("no sentences given; pass a list with at least one expression")
        n = self.max_tokens
        input_ids = torch.zeros(len(sentences), n, dtype=torch.long)  # (B, N)
        attention_mask = torch.zeros(len(sentences), n, dtype=torch.long)  # (B, N)
        for b, sentence in enumerate(sentences):
            ids = self.encode(sentence)
            if len(ids) > n:
                if not _TRUNCATION_WARNED:
                    warnings.warn(
                        f"expression longer than {n} tokens was truncated to the first {n} "
                        f"(text.max_tokens={n}); this warning is shown once",
                        UserWarning,
                        stacklevel=2,
                    )
                    _TRUNCATION_WARNED = True
                ids = ids[: n - 1] + [ids[-1]]  # keep the end token
            input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[b, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids back to text, special and padding tokens dropped (for figures and logs)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def tokens(self, sentence: str) -> list[str]:
        """The word pieces of one sentence (after truncation), with [CLS]/[SEP]."""
        ids = self(sentence)
        n = int(ids["attention_mask"][0].sum())
        return self.backend.convert_ids_to_tokens(ids["input_ids"][0, :n].tolist())

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the tokenizer files (``tokenizer.json``, config, vocab) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save_pretrained(str(directory))
        vocab = getattr(self.backend, "get_vocab", None)
        if self.kind == "bert" and vocab is not None:
            items = sorted(vocab().items(), key=lambda kv: kv[1])
            (directory / "vocab.txt").write_text(
                "".join(f"{tok}\n" for tok, _ in items), encoding="utf-8"
            )


def _bert_backend(source: str | Path | dict[str, int]) -> Any:
    from transformers import BertTokenizer

    if isinstance(source, dict):
        return BertTokenizer(vocab=source)
    return BertTokenizer(vocab=read_vocab(source))


def build_tokenizer(config: TextConfig) -> Tokenizer:
    """Build the :class:`Tokenizer` a text config implies, with no network unless
    ``config.pretrained`` is a hub id.

    Source, in order: ``config.vocab`` when set (``"tiny"``, a ``vocab.txt`` path, or a
    tokenizer directory), else ``config.pretrained`` (directory or hub id).
    """
    if config.kind not in ("bert", "clip"):
        raise ConfigError(f"text.kind={config.kind!r} is unknown; use bert or clip")
    backend: Any
    vocab = config.vocab
    if vocab is not None:
        if vocab == "tiny":
            if config.kind != "bert":
                raise ConfigError("the tiny vocabulary is a BERT vocabulary; use text.kind='bert'")
            backend = _bert_backend(TINY_VOCAB)
        elif os.path.isdir(vocab):
            try:
                backend = _from_dir(config.kind, vocab)
            except OSError as exc:
                raise ConfigError(f"text.vocab={vocab!r} holds no tokenizer ({exc})") from None
        elif os.path.isfile(vocab):
            if config.kind != "bert":
                raise ConfigError(
                    "a CLIP tokenizer needs a directory (vocab.json, merges.txt), not one file"
                )
            backend = _bert_backend(vocab)
        else:
            raise ConfigError(
                f"text.vocab={vocab!r} is neither 'tiny' nor an existing file or directory"
            )
    elif config.pretrained is not None:
        source = os.path.expanduser(config.pretrained)
        if is_local_source(source):
            try:
                backend = _from_dir(config.kind, source)
            except OSError as exc:
                raise ConfigError(
                    f"text.pretrained={source!r} holds no tokenizer ({exc})"
                ) from None
        else:
            try:
                backend = _from_dir(config.kind, source)
            except (OSError, ValueError) as exc:
                raise hub_failure("tokenizer", source, exc) from None
    else:
        raise ConfigError(
            "the text config names no tokenizer; set text.vocab ('tiny', a vocab.txt or a tokenizer "
            "directory) or text.pretrained"
        )
    return Tokenizer(backend, max_tokens=config.max_tokens, kind=config.kind)


def _from_dir(kind: str, source: str) -> Any:
    """A tokenizer from a local directory or a hub id.

    transformers 5 returns an *empty* tokenizer (5 special tokens, every word [UNK]) for a
    source it cannot find, so the result is checked for a real vocabulary.
    """
    backend = _from_dir_unchecked(kind, source)
    if len(backend) < 10:
        raise OSError(f"no tokenizer vocabulary found at {source!r}")
    return backend


def _from_dir_unchecked(kind: str, source: str) -> Any:
    if kind == "clip":
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(source)
    from transformers import BertTokenizer

    vocab_file = Path(source) / "vocab.txt"
    if not is_local_source(source):
        from huggingface_hub import hf_hub_download

        vocab_file = Path(hf_hub_download(source, "vocab.txt"))
        return BertTokenizer(vocab=read_vocab(vocab_file))
    if vocab_file.is_file():
        # Build from the vocabulary itself: never trust a fast-tokenizer file silently.
        lower = True
        cfg = Path(source) / "tokenizer_config.json"
        if cfg.is_file():
            import json

            lower = bool(json.loads(cfg.read_text()).get("do_lower_case", True))
        return BertTokenizer(vocab=read_vocab(vocab_file), do_lower_case=lower)
    return BertTokenizer.from_pretrained(source)
