"""Spelling and letter counting: SpellingBee ("How many r are in strawberry?") and SimpleSpelling.

A token is a chunk of several letters, so a small model cannot see how a word is spelled; these synthetic tasks
teach it (nanochat tasks/spellingbee.py, with nanochat's draws in nanochat's order). SpellingBee's answer spells
the word out, counts by hand, checks the count with the calculator tool (`'word'.count('r')`) and ends with
GSM8K's `#### n` line; SimpleSpelling just spells a word. The words come from a list (see `load_words`):
- "dwyl": nanochat's list, `words_alpha.txt` of github.com/dwyl/english-words (370K words), downloaded once;
  its README says the copyright of the list stays with its authors (infochimps, from Moby), no licence file;
- "web2": PyPI `english-words` (MIT): Webster's Second International (1934, public domain), 234K words;
- "wamerican": Debian's `wamerican` (/usr/share/dict/american-english, SCOWL, permissive), ~64K words;
- or a text file of one word per line.
"""

from __future__ import annotations

import functools
import random
import string
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nanochat_pl.common import UserError
from nanochat_pl.sources.download import download_file
from nanochat_pl.tasks.gsm8k import final_answer_matches
from nanochat_pl.tasks.hub import task_data_dir
from nanochat_pl.tasks.task import SHUFFLE_SEED, Conversation, GeneratedTask, Split, exact_match, qa

WORD_LIST_URL = "https://raw.githubusercontent.com/dwyl/english-words/refs/heads/master/words_alpha.txt"
WAMERICAN_PATH = Path("/usr/share/dict/american-english")
WORD_LISTS = ("dwyl", "web2", "wamerican")  # "auto" takes the first of these it can get

# nanochat's 51 phrasings of the question (tasks/spellingbee.py), in 7 languages: the skill hangs on no one way to ask
TEMPLATES = tuple((Path(__file__).parent / "data" / "spellingbee.txt").read_text(encoding="utf-8").splitlines())
QUOTES = ("", "'", '"')


class SpellingBee(GeneratedTask):
    """Letter-counting problems whose answers count by hand, check with the calculator and end in `#### n`; the
    words are those of `words`: "auto", "dwyl", "web2", "wamerican" or a file."""

    def __init__(self, size: int = 1000, split: Split = "train", words: str = "auto", **kwargs: Any):
        super().__init__(size, split, **kwargs)
        self.words = words

    def get_example(self, index: int) -> Conversation:
        rng = self.rng(index)
        word = rng.choice(load_words(self.words))
        # mostly a letter of the word, sometimes any letter (the answer is then often 0)
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(string.ascii_lowercase)
        count = word.count(letter)

        template = rng.choice(TEMPLATES)
        if rng.random() < 0.3:  # people type without shift
            template = template.lower()
        letter_q, word_q = rng.choice(QUOTES), rng.choice(QUOTES)
        question = template.format(letter=f"{letter_q}{letter}{letter_q}", word=f"{word_q}{word}{word_q}")
        if rng.random() < 0.5:
            question += "?"

        # "{i}:{c}", no space: " a" and "a" are different tokens, and the spelled-out word above uses "a"
        counting = "".join(
            f"{i}:{char} hit! count={word[:i].count(letter)}\n" if char == letter else f"{i}:{char}\n"
            for i, char in enumerate(word, 1)
        )
        by_hand = (
            f"We are asked to find the number '{letter}' in the word '{word}'. "
            "Let me try a manual approach first.\n\n"
            f"First spell the word out:\n{word}:{','.join(word)}\n\n"
            f"Then count the occurrences of '{letter}':\n{counting}\nThis gives us {count}."
        )
        answer = [
            {"type": "text", "text": by_hand},
            {"type": "text", "text": "\n\nLet me double check this using Python:\n\n"},
            # words are a-z only (load_words), so this is always an expression the calculator accepts
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},  # what calculator() returns for it
            {"type": "text", "text": f"\n\nPython gives us {count}.\n\nMy final answer is:\n\n#### {count}"},
        ]
        return qa(question, answer)

    evaluate = staticmethod(final_answer_matches)


class SimpleSpelling(SpellingBee):
    """Words of the same lists to spell: "Spell the word: apple" -> "apple:a,p,p,l,e"."""

    def get_example(self, index: int) -> Conversation:
        word = self.rng(index).choice(_shuffled_words(self.words))
        return qa(f"Spell the word: {word}", f"{word}:{','.join(word)}")

    evaluate = staticmethod(exact_match)


@functools.cache
def load_words(source: str = "auto") -> tuple[str, ...]:
    """The words of a list (see the module's docstring), lowercase a-z only, in a fixed order. "auto" is the first
    of WORD_LISTS this machine has or can get (which one is printed), so the CPU demo runs offline."""
    if source == "auto":
        reasons = []
        for name in WORD_LISTS:
            try:
                words = load_words(name)
            except UserError as e:
                reasons.append(f"{name}: {e}")
                continue
            print(f"spelling tasks: the {name} word list ({len(words):,} words)", file=sys.stderr)
            return words
        raise UserError(f"no word list for the spelling tasks ({'; '.join(reasons)})")
    if source == "web2":
        try:
            from english_words import get_english_words_set
        except ImportError as e:
            raise UserError("the web2 word list needs the english-words package (pip install english-words)") from e
        return _clean(get_english_words_set(["web2"], alpha=True, lower=True), "english-words web2")
    if source == "dwyl":
        # one attempt: "auto" has offline fallbacks, and an explicit "dwyl" fails with the reason at once
        path = download_file(WORD_LIST_URL, task_data_dir() / "words_alpha.txt", _check_word_file, attempts=1)
    elif source == "wamerican":
        if not WAMERICAN_PATH.exists():
            raise UserError(f"{WAMERICAN_PATH} is missing (Debian/Ubuntu: apt-get install wamerican)")
        path = WAMERICAN_PATH
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"word list {source!r} is none of auto, {', '.join(WORD_LISTS)} and not a file")
    return _clean(path.read_text(encoding="utf-8").split(), str(path))


@functools.cache
def _shuffled_words(source: str) -> tuple[str, ...]:
    """The list in another order: SimpleSpelling draws with SpellingBee's seeds, and should draw other words
    (nanochat shuffles with Random(42) too)."""
    words = list(load_words(source))
    random.Random(SHUFFLE_SEED).shuffle(words)
    return tuple(words)


def _clean(words: Iterable[str], where: str) -> tuple[str, ...]:
    """Sorted, unique, lowercase a-z words: a quote or a capital would break `'word'.count('x')` or the task."""
    kept = tuple(sorted({w for w in words if w.isascii() and w.isalpha() and w.islower()}))
    if not kept:
        raise UserError(f"{where} has no lowercase a-z words")
    return kept


def _check_word_file(path: Path) -> None:
    """A downloaded word list is ASCII words, one a line; anything else (an HTML error page) is refused."""
    words = path.read_bytes().split()
    if not words or not all(word.isalpha() for word in words):  # bytes.isalpha(): ASCII letters only
        raise UserError("the downloaded file is not a list of words")
