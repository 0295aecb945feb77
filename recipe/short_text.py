"""Short-utterance text for the corpus: digits, numbers, digit strings, yes/no, commands and spelled letters.

    python -m recipe.short_text --out data/text_short [--train-lines 8000] [--dev-lines 300] [--test-lines 300]

Real users often say one word, a number or a code; the sentence corpus holds none of that, and a model trained
only on 3-25-word sentences fills a one-word input with a sentence. The lines here are already in the corpus's
normal form (lower-case words, numbers spelled out), so ``recipe.synthesize --text data/text_short`` reads them
as it reads sentences. Dev and test are split from training by text, as for sentences: they hold digit strings,
numbers, commands and spellings that training never says. Single words (a digit alone, "yes") cannot be held
out and still be learnt, so they are training-only and the real spoken digits judge them. A line repeated in
``train.txt`` is drawn that many times, each time in another voice: that is how the mix is weighted.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path

from num2words import num2words

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ANSWERS = ["yes", "no", "okay", "cancel", "stop", "help", "yeah", "nope", "sure", "correct", "wrong", "repeat",
           "continue", "start", "next", "back", "pause", "play", "resume", "confirm", "agent", "operator", "done",
           "hello", "goodbye", "thanks", "please", "sorry", "maybe", "right", "left", "up", "down", "enter", "delete",
           "skip", "menu", "balance", "billing", "support", "sales", "payment", "account", "emergency"]
VERBS = ["call", "open", "close", "check", "pay", "cancel", "play", "stop", "show", "read", "send", "find", "turn on",
         "turn off", "set", "delete", "repeat", "start", "book", "track"]
OBJECTS = ["home", "the door", "my balance", "my bill", "the lights", "music", "the radio", "my messages", "an email",
           "the weather", "a timer", "an alarm", "my order", "my account", "the news", "the heating", "a taxi",
           "my calendar", "the window", "mom", "the office", "voicemail", "my card", "the last message"]
PHRASES = ["go back", "main menu", "talk to an agent", "speak to someone", "try again", "say that again",
           "not now", "yes please", "no thanks", "that's right", "that's wrong", "i don't know", "one moment",
           "volume up", "volume down", "next song", "previous track", "wake up", "good morning", "good night",
           "thank you", "never mind", "what time is it", "where am i", "call me back", "all done"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz")

# Share of train.txt lines per kind (the rest of the mix is decided by the sentence corpus beside it).
TRAIN_MIX = {"digit": 0.22, "digit_string": 0.24, "number": 0.18, "answer": 0.10, "command": 0.16, "letters": 0.10}


def spoken_number(n: int) -> str:
    """``405`` -> ``four hundred and five``; hyphens and commas dropped, as the corpus's text normaliser does."""
    return num2words(n).replace("-", " ").replace(",", "")


def digit_string(rng: random.Random) -> str:
    """A phone number, PIN or code read digit by digit; zero is sometimes "oh", as people read numbers."""
    oh = rng.random() < 0.3
    return " ".join("oh" if d == 0 and oh else DIGITS[d] for d in (rng.randrange(10) for _ in range(rng.randint(2, 10))))


def number(rng: random.Random) -> str:
    scale = rng.choice([100, 100, 1000, 10000, 1000000])
    return spoken_number(rng.randrange(scale))


def command(rng: random.Random) -> str:
    if rng.random() < 0.35:
        return rng.choice(PHRASES)
    return f"{rng.choice(VERBS)} {rng.choice(OBJECTS)}"


def letters(rng: random.Random) -> str:
    return " ".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 4)))


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "digit": lambda rng: rng.choice(DIGITS + ["oh"]),
    "digit_string": digit_string,
    "number": number,
    "answer": lambda rng: rng.choice(ANSWERS),
    "command": command,
    "letters": letters,
}
HELD_OUT_KINDS = ("digit_string", "number", "command", "letters")  # kinds with texts enough to hold some out


def held_out_texts(rng: random.Random, count: int, exclude: set[str]) -> list[str]:
    """``count`` distinct texts of the kinds that can be held out."""
    out: list[str] = []
    seen = set(exclude)
    while len(out) < count:
        text = GENERATORS[rng.choice(HELD_OUT_KINDS)](rng)
        if text not in seen and len(text.split()) > 1:  # one-word texts are training's
            seen.add(text)
            out.append(text)
    return out


def build(train_lines: int, dev_lines: int, test_lines: int, seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    dev = held_out_texts(rng, dev_lines, set())
    test = held_out_texts(rng, test_lines, set(dev))
    held = set(dev) | set(test)
    train: list[str] = []
    for kind, share in TRAIN_MIX.items():
        want, tries = round(share * train_lines), 0
        while want and tries < 100 * train_lines:
            tries += 1
            text = GENERATORS[kind](rng)
            if text not in held:
                train.append(text)
                want -= 1
    rng.shuffle(train)
    return {"train": train, "dev": dev, "test": test}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train-lines", type=int, default=8000)
    ap.add_argument("--dev-lines", type=int, default=300)
    ap.add_argument("--test-lines", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, lines in build(args.train_lines, args.dev_lines, args.test_lines, args.seed).items():
        (args.out / f"{split}.txt").write_text("\n".join(lines) + "\n")
        print(f"{split}: {len(lines)} lines, {len(set(lines))} distinct")


if __name__ == "__main__":
    main()
