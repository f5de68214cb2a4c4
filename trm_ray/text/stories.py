"""Built-in, seeded text corpora, so that every text recipe and test runs offline.

    generate_records("stories", start=0, count=3, seed=0)   # [{"text": "Once upon a time, ..."}, ...]
    generate_records("chat", start=0, count=3, seed=0)      # [{"messages": [{"role": "user", ...}, ...]}, ...]

`stories`: short children's stories in the manner of TinyStories, from a small template
grammar: a character (kind, name, pronoun), a place, a wanted object, a problem, a helper, a
resolution and a feeling, over several sentences. Names and pronouns stay consistent within a
story, so a model can learn structure that spans sentences, not only word statistics.

`chat`: conversations in the manner of TinyChat: user/assistant turns about colours,
counting, small sums, opposites, animal sounds and short story requests. Every answer is a
function of its question (the same question always gets the same answer), so it is learnable.

Record k of a corpus draws only from its own generator, seeded by (corpus, seed, k): records do
not depend on how a build splits them into tasks, and the same seed gives the same corpus.
"""

from __future__ import annotations

import random
from typing import Any

KINDS = ("stories", "chat")

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------
# (noun phrase, name pool, pronoun, possessive)
CHARACTERS = (
    ("a little girl", ("Lily", "Mia", "Sue", "Anna", "Lucy", "Emma", "Zoe"), "she", "her"),
    ("a little boy", ("Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Tim"), "he", "his"),
    ("a small dog", ("Spot", "Rex", "Buddy", "Pip"), "he", "his"),
    ("a curious cat", ("Kitty", "Misty", "Luna", "Tiger"), "she", "her"),
    ("a brave bunny", ("Hop", "Coco", "Daisy", "Fluff"), "she", "her"),
    ("a kind bear", ("Bruno", "Teddy", "Honey", "Bo"), "he", "his"),
    ("a tiny bird", ("Tweet", "Sky", "Polly", "Chip"), "she", "her"),
)
FRIENDS = (
    ("a wise owl", "the owl"), ("a friendly frog", "the frog"), ("an old turtle", "the turtle"),
    ("a happy duck", "the duck"), ("a big elephant", "the elephant"), ("a gentle cow", "the cow"),
    ("a busy ant", "the ant"), ("a funny monkey", "the monkey"),
)
PLACES = (
    ("a small house near the woods", "the woods"), ("a farm with red barns", "the farm"),
    ("a town by the sea", "the beach"), ("a big green park", "the park"),
    ("a village on a hill", "the hill"), ("a garden full of flowers", "the garden"),
)
# (object, where it ends up lost, adjective)
OBJECTS = (
    ("ball", "under a big bush", "red"), ("kite", "up in a tall tree", "blue"),
    ("hat", "in a deep puddle", "yellow"), ("toy boat", "behind a rock", "green"),
    ("teddy bear", "under the bed", "soft"), ("balloon", "on the roof", "pink"),
    ("book", "by the old fence", "new"), ("shoe", "in the tall grass", "shiny"),
)
FEELINGS = ("happy", "proud", "glad", "excited", "thankful")
SAD_FEELINGS = ("sad", "worried", "upset", "scared")
WEATHER = ("The sun was bright.", "It was a windy day.", "The sky was full of clouds.", "It was a warm morning.")
LESSONS = (
    "friends help each other", "it is good to share", "you should never give up",
    "asking for help is brave", "being kind makes everyone happy",
)

COLOURS = {
    "the sky": "blue", "grass": "green", "a banana": "yellow", "snow": "white", "a strawberry": "red",
    "an orange": "orange", "coal": "black", "a lemon": "yellow", "a leaf": "green", "milk": "white",
    "a cherry": "red", "the sea": "blue", "chocolate": "brown", "a carrot": "orange",
}
OPPOSITES = {
    "big": "small", "hot": "cold", "up": "down", "fast": "slow", "happy": "sad", "day": "night",
    "old": "new", "open": "closed", "full": "empty", "light": "dark", "wet": "dry", "loud": "quiet",
}
SOUNDS = {"dog": "woof", "cat": "meow", "cow": "moo", "duck": "quack", "sheep": "baa", "pig": "oink",
          "lion": "roar", "owl": "hoot", "frog": "ribbit", "bee": "buzz"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen", "twenty")


def _rng(kind: str, seed: int, index: int) -> random.Random:
    # A string seed is hashed (sha512) by random.Random: stable across Python versions and runs.
    return random.Random(f"trm-ray-{kind}:{seed}:{index}")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# --------------------------------------------------------------------------------------------
# Stories
# --------------------------------------------------------------------------------------------
def story(rng: random.Random) -> str:
    kind, names, he, his = rng.choice(CHARACTERS)
    name = rng.choice(names)
    place, outside = rng.choice(PLACES)
    thing, lost_at, colour = rng.choice(OBJECTS)
    friend, the_friend = rng.choice(FRIENDS)
    good, sad = rng.choice(FEELINGS), rng.choice(SAD_FEELINGS)
    him = {"he": "him", "she": "her"}[he]
    sentences = [
        rng.choice((f"Once upon a time, there was {kind} named {name}.",
                    f"One day, {kind} named {name} woke up early.",
                    f"There was once {kind} called {name}.")),
        f"{_cap(he)} lived in {place}.",
        f"{name} had a {colour} {thing}. {_cap(he)} loved {his} {thing} very much.",
    ]
    if rng.random() < 0.5:
        sentences.append(rng.choice(WEATHER))
    sentences.append(rng.choice((f"{name} went to {outside} to play with {his} {thing}.",
                                 f"{name} took {his} {thing} to {outside}.")))
    sentences.append(f"But then the {thing} was gone! It was {lost_at}.")
    sentences.append(f"{name} felt {sad}. {_cap(he)} could not get {his} {thing}.")
    plot = rng.randrange(3)
    if plot == 0:  # a friend helps
        sentences.append(f"Then {friend} came by. \"Why are you {sad}?\" asked {the_friend}.")
        sentences.append(f"\"I lost my {thing},\" said {name}.")
        sentences.append(f"\"I will help you,\" said {the_friend}. Together they got the {thing} back.")
        sentences.append(f"{name} said, \"Thank you!\" {_cap(he)} was {good}.")
    elif plot == 1:  # the character does it alone
        sentences.append(f"{name} did not give up. {_cap(he)} tried again and again.")
        sentences.append(f"At last, {name} got the {thing} back.")
        sentences.append(f"{_cap(he)} felt {good} and hugged {his} {thing}.")
    else:  # shares, and makes a friend
        sentences.append(f"{_cap(friend)} found the {thing} and brought it to {name}.")
        sentences.append(f"{name} was {good}. {_cap(he)} let {the_friend} play with the {thing} too.")
        sentences.append(f"From that day on, {name} and {the_friend} were best friends.")
    if rng.random() < 0.6:
        sentences.append(f"{name} learned that {rng.choice(LESSONS)}.")
    sentences.append(rng.choice((f"That night, {name} went to sleep with a big smile.",
                                 "The end.", f"And {he} played with {his} {thing} every day.",
                                 f"Everyone was happy for {him}.")))
    return " ".join(sentences)


# --------------------------------------------------------------------------------------------
# Chat
# --------------------------------------------------------------------------------------------
def _number(value: int) -> str:
    return NUMBER_WORDS[value] if 0 <= value < len(NUMBER_WORDS) else str(value)


def _colour_turn(rng: random.Random) -> tuple[str, str]:
    thing = rng.choice(sorted(COLOURS))
    return f"What colour is {thing}?", f"{_cap(thing)} is {COLOURS[thing]}."


def _count_turn(rng: random.Random) -> tuple[str, str]:
    start = rng.randrange(1, 10)
    stop = start + rng.randrange(2, 7)
    return f"Count from {start} to {stop}.", ", ".join(str(v) for v in range(start, stop + 1)) + "."


def _sum_turn(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(0, 10), rng.randrange(0, 10)
    op = rng.randrange(3)
    if op == 0:
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if op == 1:
        a, b = max(a, b), min(a, b)
        return f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."
    return f"What is {a} times {b}?", f"{a} times {b} is {a * b}."


def _word_turn(rng: random.Random) -> tuple[str, str]:
    value = rng.randrange(0, 21)
    return f"How do you write {value} in words?", f"{value} is written {_number(value)}."


def _opposite_turn(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(sorted(OPPOSITES))
    return f"What is the opposite of {word}?", f"The opposite of {word} is {OPPOSITES[word]}."


def _sound_turn(rng: random.Random) -> tuple[str, str]:
    animal = rng.choice(sorted(SOUNDS))
    return f"What does a {animal} say?", f"A {animal} says {SOUNDS[animal]}."


def _story_turn(rng: random.Random) -> tuple[str, str]:
    kind, names, he, his = rng.choice(CHARACTERS)
    name = rng.choice(names)
    thing, lost_at, colour = rng.choice(OBJECTS)
    question = f"Tell me a short story about {kind} named {name} and a {thing}."
    answer = (f"Once upon a time, {kind} named {name} had a {colour} {thing}. One day the {thing} was {lost_at}. "
              f"{name} looked and looked, and at last {he} found it. {_cap(he)} was happy with {his} {thing} again.")
    return question, answer


TURNS = (_colour_turn, _count_turn, _sum_turn, _word_turn, _opposite_turn, _sound_turn, _story_turn)
GREETINGS = (("Hi!", "Hello! How can I help you today?"), ("Hello.", "Hi there! What would you like to know?"))


def chat(rng: random.Random) -> list[dict[str, str]]:
    messages = []
    if rng.random() < 0.25:
        greeting, reply = rng.choice(GREETINGS)
        messages += [{"role": "user", "content": greeting}, {"role": "assistant", "content": reply}]
    for _ in range(rng.randrange(1, 4)):
        question, answer = rng.choice(TURNS)(rng)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def generate_records(kind: str, start: int, count: int, seed: int) -> list[dict[str, Any]]:
    """Records start..start+count-1 of corpus `kind` ("stories" or "chat") for `seed`."""
    if kind not in KINDS:
        raise ValueError(f"unknown generated corpus {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "stories":
        return [{"text": story(_rng(kind, seed, k))} for k in range(start, start + count)]
    return [{"messages": chat(_rng(kind, seed, k))} for k in range(start, start + count)]
