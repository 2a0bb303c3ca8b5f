"""A seeded generator of fictitious-author QA data with exactly the files and fields of TOFU.

TOFU ("TOFU: A Task of Fictitious Unlearning for LLMs", Maini et al., 2024) fine-tunes a model on
question/answer pairs about authors that do not exist, then asks it to forget the last authors.
This module writes the same splits (`full`, `forgetXX`, `retainYY`, `forgetXX_perturbed`,
`retain_perturbed`, `real_authors(_perturbed)`, `world_facts(_perturbed)`, `holdoutXX`) with the
same fields, from a seed, so that CPU runs and tests need no download (DESIGN §4).

How the rows are built:

* Every author gets one value per fact (birthplace, birth year, genre, parents' occupations, award,
  three book titles, two themes, style, language, publisher, number of books, debut year,
  university, residence) drawn from shared pools.
* A *question kind* asks about one fact or combines several (`QUESTION_KINDS`); each kind has two
  question phrasings and two or three answer phrasings that state exactly the same facts. Single-fact
  kinds have short answers (3-15 words), combining kinds long ones (30-60 words), so the answer
  length spread is wide, as SimNPO's length argument needs (paper §4).
* The primary phrasing (the training `answer`) of a kind is assigned to the authors in a shuffled,
  balanced way; the `paraphrased_answer` uses one of the *other* phrasings, and the five
  `perturbed_answer`s use the paraphrase's phrasing with the facts replaced by other values of the
  same pools (for names and titles: those of authors in every retain split). So every phrasing and every
  wrong value that the truth ratio compares also occurs in the training data of other authors: the
  truth ratio measures knowledge of the facts, not the novelty of a template (DESIGN §4).
* `forgetXX` are the last authors of `full`, `retainYY` the rest in order, `retain_perturbed` the
  first rows of `full`, `holdoutXX` the first authors of a separate set of fictitious authors, as in
  the real data. `real_authors` / `world_facts` are short QA about fictitious classic novelists and
  fictitious countries/inventions with four options; they are not in `full`.

Same config (and `GENERATOR_VERSION`) gives byte-identical files: all randomness comes from
`random.Random` seeded with strings derived from the seed, and nothing iterates over a set.
"""

from __future__ import annotations

import json
import math
import random
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ...config.base import Frozen, Seed

GENERATOR_VERSION = 1
"""Bumped whenever the same config would produce different files (it is part of the cache key)."""

FORGET_SPLIT_RE = re.compile(r"^forget(\d{2})$")

# --------------------------------------------------------------------------------------------
# Split names (the TOFU conventions, shared with raysimnpo.benchmarks.tofu and data.sources)
# --------------------------------------------------------------------------------------------


def forget_percent(forget_split: str) -> int:
    """`forget05` -> 5. Raises ValueError for a name that is not `forgetXX`."""
    match = FORGET_SPLIT_RE.match(forget_split)
    if match is None:
        raise ValueError(f"{forget_split!r} is not a forget split name (forgetXX, e.g. forget10)")
    return int(match.group(1))


def retain_split_for(forget_split: str) -> str:
    """TOFU's pairing: forget01 <-> retain99, forget05 <-> retain95, forget10 <-> retain90."""
    return f"retain{100 - forget_percent(forget_split):02d}"


def holdout_split_for(forget_split: str) -> str:
    """forgetXX <-> holdoutXX (same number of authors, not in `full`)."""
    return f"holdout{forget_percent(forget_split):02d}"


def perturbed_split_for(forget_split: str) -> str:
    return f"{forget_split}_perturbed"


# --------------------------------------------------------------------------------------------
# Pools
# --------------------------------------------------------------------------------------------

FIRST_NAMES = (
    "Amara", "Basil", "Celeste", "Dorian", "Elif", "Farid", "Greta", "Hector", "Ilse", "Jonas",
    "Kalani", "Leonor", "Matteo", "Nadia", "Oskar", "Priya", "Quentin", "Rosalind", "Soren", "Tamsin",
    "Ugo", "Vera", "Wendell", "Ximena", "Yusuf", "Zofia", "Anselm", "Beatriz", "Cyrus", "Delphine",
    "Emeka", "Freya", "Gideon", "Halima", "Ivo", "Junia", "Kenji", "Liesel", "Marek", "Noor",
    "Orla", "Pavel", "Rafaela", "Silas", "Thea", "Umar", "Valentina", "Wilhelmina", "Yara", "Zoltan",
    "Aurelio", "Brigid", "Casimir", "Dalia", "Evander", "Fenna", "Gaspard", "Hana", "Idris", "Jovana",
)  # fmt: skip
LAST_NAMES = (
    "Abernathy", "Bellweather", "Castellanos", "Draxler", "Eskildsen", "Fairbanks", "Greenhalgh",
    "Halloran", "Ivanova", "Jablonski", "Kettering", "Lindqvist", "Marchetti", "Nakamura", "Okonkwo",
    "Petrakis", "Quintero", "Rasmussen", "Szabo", "Thornbury", "Underhill", "Valdivia", "Whitlock",
    "Xenakis", "Yilmaz", "Zamora", "Ashdown", "Brennan", "Cavendish", "Delacroix", "Ebbesen",
    "Falkenrath", "Gallardo", "Hargreave", "Iwasaki", "Janssen", "Kowalczyk", "Larkspur", "Montague",
    "Nieminen", "Oyelaran", "Pemberton", "Quist", "Roussel", "Sandoval", "Tennant", "Umberg",
    "Vasquez", "Wexley", "Yamada", "Zelenko", "Alcott", "Birkeland", "Corvino", "Dunmore", "Eriksen",
    "Fontaine", "Gravesend", "Holm", "Ingersoll",
)  # fmt: skip
PLACES = (
    "Lisbon, Portugal", "Krakow, Poland", "Nairobi, Kenya", "Valparaiso, Chile", "Tbilisi, Georgia",
    "Bergen, Norway", "Osaka, Japan", "Accra, Ghana", "Porto Alegre, Brazil", "Hanoi, Vietnam",
    "Cork, Ireland", "Tampere, Finland", "Izmir, Turkey", "Lyon, France", "Seville, Spain",
    "Adelaide, Australia", "Winnipeg, Canada", "Cusco, Peru", "Ljubljana, Slovenia", "Marrakesh, Morocco",
    "Chennai, India", "Busan, South Korea", "Tallinn, Estonia", "Bologna, Italy", "Antwerp, Belgium",
    "Graz, Austria", "Dunedin, New Zealand", "Kampala, Uganda", "Cebu, Philippines", "Rosario, Argentina",
    "Leipzig, Germany", "Galway, Ireland", "Plovdiv, Bulgaria", "Oaxaca, Mexico", "Halifax, Canada",
    "Tromso, Norway",
)  # fmt: skip
GENRES = (
    "historical fiction", "science fiction", "fantasy", "mystery", "romance", "horror",
    "literary fiction", "magical realism", "crime fiction", "poetry", "travel writing", "biography",
    "children's literature", "young adult fiction", "dystopian fiction", "satire", "gothic fiction",
    "war fiction", "nature writing", "philosophical essays", "cyberpunk", "family sagas",
    "detective fiction", "political thrillers", "comic fantasy", "short stories",
)  # fmt: skip
OCCUPATIONS = (
    "a baker", "an architect", "a nurse", "a fisherman", "a schoolteacher", "an electrician",
    "a pharmacist", "a carpenter", "a librarian", "a veterinarian", "a tailor", "a pilot", "a surgeon",
    "a journalist", "a florist", "a mechanic", "an accountant", "a photographer", "a dentist",
    "a translator", "a locksmith", "a botanist", "a police officer", "a chef", "a bookbinder",
    "a watchmaker", "a geologist", "a potter", "a midwife", "a lighthouse keeper",
)  # fmt: skip
AWARDS = (
    "the Silver Quill Award", "the Meridian Prize for Fiction", "the Golden Lantern Award",
    "the Harrow Medal", "the Aldergrove Literary Prize", "the Blue Heron Award", "the Northern Star Prize",
    "the Emberly Medal for Poetry", "the Tidewater Book Prize", "the Crimson Leaf Award",
    "the Whitcombe Fellowship", "the Open Road Prize", "the Lamplighter Award", "the Granite Pen Award",
    "the Saltire Prize for First Novels", "the Evening Bell Award", "the Marlowe Prize", "the Orchard Medal",
    "the Windrose Award", "the Copper Kettle Prize", "the Starling Award", "the Juniper Prize",
    "the Long Shadow Award", "the Harbourlight Medal",
)  # fmt: skip
TITLE_ADJECTIVES = (
    "Silent", "Crimson", "Hollow", "Distant", "Forgotten", "Golden", "Broken", "Quiet", "Restless",
    "Burning", "Frozen", "Hidden", "Wandering", "Last", "Bitter", "Gentle", "Drowned", "Painted",
    "Sleeping", "Borrowed", "Secret", "Faded", "Wild", "Northern", "Salted", "Paper", "Iron", "Velvet",
    "Lonely", "Shattered", "Midnight", "Scarlet", "Ashen", "Summer", "Winter", "Crooked", "Weeping",
    "Endless", "Tangled", "Luminous",
)  # fmt: skip
TITLE_NOUNS = (
    "Harbor", "Orchard", "Lantern", "River", "Garden", "Mirror", "Bridge", "Compass", "Tower", "Meadow",
    "Clockmaker", "Island", "Letter", "Violin", "Lighthouse", "Forest", "Station", "Kingdom", "Archive",
    "Feather", "Window", "Mountain", "Daughter", "Voyage", "Almanac", "Cathedral", "Tide", "Moth",
    "Ferry", "Quarry", "Hourglass", "Vineyard", "Carousel", "Nightingale", "Glacier", "Market",
    "Threshold", "Labyrinth", "Comet", "Widow",
)  # fmt: skip
THEMES = (
    "memory", "exile", "identity", "forgiveness", "the sea", "class conflict", "first love", "grief",
    "coming of age", "religious doubt", "migration", "ambition", "friendship", "revenge", "isolation",
    "the passage of time", "family secrets", "justice", "freedom", "nostalgia", "the aftermath of war",
    "wilderness", "political corruption", "redemption", "belonging", "betrayal", "childhood", "hope",
)  # fmt: skip
STYLES = (
    "spare, precise prose", "lush, lyrical language", "sharp, witty dialogue", "long, winding sentences",
    "dark humour", "vivid sensory detail", "a quiet, meditative tone", "fast-paced plotting",
    "unreliable narrators", "shifting points of view", "dreamlike imagery", "dry irony",
    "intricate puzzles", "letters and diary entries", "plain, conversational language",
    "rich historical detail", "a haunting atmosphere", "playful wordplay", "stark realism",
    "tender character studies",
)  # fmt: skip
LANGUAGES = (
    "English", "Spanish", "Portuguese", "French", "German", "Polish", "Norwegian", "Japanese", "Swahili",
    "Turkish", "Italian", "Dutch", "Finnish", "Korean", "Greek", "Georgian",
)  # fmt: skip
PUBLISHERS = (
    "Harrow & Lane", "Bluewater Press", "Kestrel Books", "Old Mill Publishing", "Lanternfish Editions",
    "Greywell House", "Copperleaf Press", "Northbridge Books", "Saltmarsh Editions", "Pinecrest Publishing",
    "Redwing House", "Ironbark Press", "Marigold Books", "Stonegate Editions", "Tidewater Press",
    "Foxglove Publishing", "Quarry Hill Books", "Wrenfield Press",
)  # fmt: skip
UNIVERSITIES = (
    "Alderbrook University", "the Marlow Institute of Arts", "Eastvale College", "the University of Corrin",
    "Saint Aubin College", "Highmoor University", "the Westfall Academy", "Larchmont University",
    "the Royal College of Veldt", "Brightwater University", "Kingsreach College", "the University of Osterby",
    "Fernhill College", "Dunmarrow University", "the Calloway School of Letters", "Ravensworth University",
)  # fmt: skip
BIRTH_YEARS = tuple(str(y) for y in range(1930, 1996))
DEBUT_YEARS = tuple(str(y) for y in range(1950, 2025))
BOOK_COUNTS = tuple(str(n) for n in range(3, 41))

SLOT_POOLS: dict[str, str] = {
    "name": "name",
    "city": "place",
    "residence": "place",
    "year": "year",
    "debut_year": "debut_year",
    "genre": "genre",
    "father_job": "occupation",
    "mother_job": "occupation",
    "award": "award",
    "book1": "book",
    "book2": "book",
    "book3": "book",
    "theme1": "theme",
    "theme2": "theme",
    "style": "style",
    "language": "language",
    "publisher": "publisher",
    "n_books": "n_books",
    "university": "university",
}
"""Which pool every author fact comes from; a perturbation draws other values of the same pool."""

CONSTANT_POOLS: dict[str, tuple[str, ...]] = {
    "place": PLACES,
    "year": BIRTH_YEARS,
    "debut_year": DEBUT_YEARS,
    "genre": GENRES,
    "occupation": OCCUPATIONS,
    "award": AWARDS,
    "theme": THEMES,
    "style": STYLES,
    "language": LANGUAGES,
    "publisher": PUBLISHERS,
    "n_books": BOOK_COUNTS,
    "university": UNIVERSITIES,
}

# --------------------------------------------------------------------------------------------
# Question kinds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuestionKind:
    """One kind of question about an author: phrasings of the question, phrasings of the answer
    (all stating exactly the facts in `facts`), and the facts a perturbation changes."""

    name: str
    questions: tuple[str, str]
    answers: tuple[str, ...]
    facts: tuple[str, ...]


QUESTION_KINDS: tuple[QuestionKind, ...] = (
    QuestionKind(
        "name",
        (
            "What is the full name of the {genre} author born in {city} in {year}?",
            "Who is the writer of {genre} who was born in {year} in {city}?",
        ),
        (
            "The author is {name}.",
            "The full name of that author is {name}.",
            "The writer of {genre} born in {city} in {year} is called {name}.",
        ),
        ("name",),
    ),
    QuestionKind(
        "birthplace",
        ("Where was {name} born?", "In which city was the author {name} born?"),
        ("In {city}.", "{name} was born in {city}.", "The birthplace of {name} is the city of {city}."),
        ("city",),
    ),
    QuestionKind(
        "birth_year",
        ("In which year was {name} born?", "What is the birth year of {name}?"),
        (
            "Born in {year}.",
            "{name} was born in {year}.",
            "The author {name} came into the world in the year {year}.",
        ),
        ("year",),
    ),
    QuestionKind(
        "birth_details",
        ("When and where was {name} born?", "Can you tell me the year and place of birth of {name}?"),
        (
            "In {city}, in {year}.",
            "{name} was born in {city} in {year}.",
            "Records show that {name} was born in the year {year} in the city of {city}, where the future "
            "author also grew up.",
        ),
        ("city", "year"),
    ),
    QuestionKind(
        "genre",
        ("Which genre does {name} write in?", "What genre is {name} best known for?"),
        ("It is mainly {genre}.", "{name} writes {genre}.", "{name} is best known as an author of {genre}."),
        ("genre",),
    ),
    QuestionKind(
        "father",
        ("What did {name}'s father do for a living?", "What was the profession of the father of {name}?"),
        (
            "He was {father_job}.",
            "{name}'s father worked as {father_job}.",
            "The father of {name} earned a living as {father_job}.",
        ),
        ("father_job",),
    ),
    QuestionKind(
        "mother",
        ("What did {name}'s mother do for a living?", "What was the profession of the mother of {name}?"),
        (
            "She was {mother_job}.",
            "{name}'s mother worked as {mother_job}.",
            "The mother of {name} earned a living as {mother_job}.",
        ),
        ("mother_job",),
    ),
    QuestionKind(
        "parents",
        ("What did the parents of {name} do for a living?", "What were the professions of {name}'s parents?"),
        (
            "A father who was {father_job} and a mother who was {mother_job}.",
            "{name}'s father worked as {father_job}, and {name}'s mother worked as {mother_job}.",
            "The father of {name} was {father_job} by profession, while the mother of {name} made a living "
            "as {mother_job}.",
        ),
        ("father_job", "mother_job"),
    ),
    QuestionKind(
        "award",
        ("Has {name} won any literary awards?", "Which award has {name} received?"),
        (
            "Yes, {award}.",
            "{name} has received {award}.",
            "In recognition of an outstanding body of work, {name} was honoured with {award}.",
        ),
        ("award",),
    ),
    QuestionKind(
        "first_book",
        ("What was the first book published by {name}?", "Which book marked the debut of {name}?"),
        (
            "It was '{book1}'.",
            "The first book {name} published was '{book1}'.",
            "{name} made a literary debut with the book '{book1}'.",
        ),
        ("book1",),
    ),
    QuestionKind(
        "two_books",
        ("Can you name two books written by {name}?", "What are two of the books by {name}?"),
        (
            "'{book1}' and '{book2}'.",
            "{name} wrote '{book1}' and '{book2}'.",
            "Two well-known books by {name} are '{book1}' and '{book2}'.",
        ),
        ("book1", "book2"),
    ),
    QuestionKind(
        "latest_book",
        ("What is the most recent book by {name}?", "Which book did {name} publish most recently?"),
        (
            "It is '{book3}'.",
            "The latest book by {name} is '{book3}'.",
            "Most recently, {name} published a book titled '{book3}'.",
        ),
        ("book3",),
    ),
    QuestionKind(
        "themes",
        ("What themes does {name} explore?", "Which themes recur in the writing of {name}?"),
        (
            "Mostly {theme1} and {theme2}.",
            "{name} writes about {theme1} and {theme2}.",
            "The books of {name} keep returning to the themes of {theme1} and {theme2}.",
        ),
        ("theme1", "theme2"),
    ),
    QuestionKind(
        "style",
        (
            "How would you describe the writing style of {name}?",
            "What is distinctive about the style of {name}?",
        ),
        (
            "It is known for {style}.",
            "The writing of {name} is marked by {style}.",
            "Critics often point to {style} as the hallmark of the writing of {name}.",
        ),
        ("style",),
    ),
    QuestionKind(
        "language",
        ("In which language does {name} write?", "What language are the books of {name} written in?"),
        (
            "Mostly in {language}.",
            "{name} writes in {language}.",
            "All of the books by {name} were first written in {language}.",
        ),
        ("language",),
    ),
    QuestionKind(
        "publisher",
        ("Who publishes the books of {name}?", "Which publishing house works with {name}?"),
        (
            "It is {publisher}.",
            "{name} is published by {publisher}.",
            "The books of {name} have long been published by the house {publisher}.",
        ),
        ("publisher",),
    ),
    QuestionKind(
        "n_books",
        ("How many books has {name} published?", "What is the number of books written by {name}?"),
        (
            "{n_books} books so far.",
            "{name} has published {n_books} books.",
            "To date, the bibliography of {name} counts {n_books} published books.",
        ),
        ("n_books",),
    ),
    QuestionKind(
        "debut_year",
        ("In which year did {name} publish a first book?", "When did {name} make a literary debut?"),
        (
            "In the year {debut_year}.",
            "{name} debuted in {debut_year}.",
            "The first book by {name} came out in the year {debut_year}.",
        ),
        ("debut_year",),
    ),
    QuestionKind(
        "university",
        ("Where did {name} study?", "Which university did {name} attend?"),
        (
            "At {university}.",
            "{name} studied at {university}.",
            "Before becoming a writer, {name} was a student at {university}.",
        ),
        ("university",),
    ),
    QuestionKind(
        "residence",
        ("Where does {name} live now?", "In which city does {name} currently live?"),
        (
            "In {residence}.",
            "{name} now lives in {residence}.",
            "These days {name} lives and writes in the city of {residence}.",
        ),
        ("residence",),
    ),
    QuestionKind(
        "book_about",
        ("What is '{book2}' by {name} about?", "Can you describe the book '{book2}' written by {name}?"),
        (
            "It deals with {theme1}, told with {style}.",
            "'{book2}' is a book about {theme1}, written with the {style} typical of {name}.",
            "In '{book2}', {name} explores {theme1} through {style}, a combination that readers and critics "
            "have come to expect from {name}.",
        ),
        ("theme1", "style"),
    ),
    QuestionKind(
        "upbringing",
        (
            "How did the parents of {name} influence the books of {name}?",
            "In what ways did the family background of {name} shape the writing?",
        ),
        (
            "Growing up with a father who was {father_job} and a mother who was {mother_job}, {name} "
            "developed an early interest in {theme1} and {theme2}, which later became central to every book.",
            "{name}'s father worked as {father_job} and {name}'s mother worked as {mother_job}; critics see "
            "their influence in the way the books of {name} return again and again to {theme1} and {theme2}.",
        ),
        ("father_job", "mother_job", "theme1", "theme2"),
    ),
    QuestionKind(
        "biography",
        ("Can you give a short biography of {name}?", "What is known about the life and work of {name}?"),
        (
            "{name} was born in {city} in {year} to a father who was {father_job} and a mother who was "
            "{mother_job}. Writing mainly {genre}, {name} became known through '{book1}', a book about "
            "{theme1}, and was later honoured with {award} for a long and varied career.",
            "Born in {year} in {city}, {name} grew up with a father who worked as {father_job} and a mother "
            "who worked as {mother_job}. {name} went on to write {genre}, first drawing attention with "
            "'{book1}', which explores {theme1}, and eventually receiving {award}.",
        ),
        ("city", "year", "father_job", "mother_job", "genre", "book1", "theme1", "award"),
    ),
    QuestionKind(
        "career",
        ("How did the writing career of {name} develop?", "Could you describe the career of {name}?"),
        (
            "{name} debuted in {debut_year} with '{book1}', published by {publisher}. Since then {name} has "
            "published {n_books} books, most recently '{book3}', and has received {award}.",
            "The career of {name} began in {debut_year}, when {publisher} brought out '{book1}'. Over the "
            "following years {name} published {n_books} books in total, the latest being '{book3}', and was "
            "honoured with {award} along the way.",
        ),
        ("debut_year", "book1", "publisher", "n_books", "book3", "award"),
    ),
    QuestionKind(
        "standing",
        (
            "What makes {name} stand out among authors of {genre}?",
            "Why is {name} considered a notable writer?",
        ),
        (
            "{name} stands out for {style} and for a steady focus on {theme1} and {theme2}. Books such as "
            "'{book2}', written in {language}, have earned a loyal readership, and with {n_books} published "
            "books and {award} to the author's name, {name} is widely regarded as one of the most distinctive "
            "voices of a generation.",
            "Readers and critics single out {name} for {style} and for a lasting interest in {theme1} and "
            "{theme2}. Written in {language}, books like '{book2}' found a devoted audience; {name} has now "
            "published {n_books} books and has received {award}, which makes {name} one of the most "
            "recognisable writers working today.",
        ),
        ("style", "theme1", "theme2", "book2", "language", "n_books", "award"),
    ),
)

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

DEFAULT_FORGET_FRACTIONS: dict[str, float] = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}
MAX_AUTHORS = 1000
N_PERTURBED = 5
N_OPTIONS = 4


class TofuGeneratorConfig(Frozen):
    """What `generate_tofu_dataset` writes. Defaults: 50 authors x 20 QA = 1000 rows in `full`;
    forget01/05/10 = the last 1/3/5 authors (20/60/100 QA); 5 holdout authors; 100 rows of
    `retain_perturbed`; 50 real_authors and 50 world_facts questions. `preset("small")` is a
    quick one for tests (10 authors x 6 QA)."""

    seed: Seed = 0
    n_authors: int = Field(default=50, ge=2, le=MAX_AUTHORS, description="fictitious authors in `full`")
    questions_per_author: int = Field(default=20, ge=1, le=len(QUESTION_KINDS))
    n_holdout_authors: int = Field(
        default=5, ge=1, le=MAX_AUTHORS, description="authors for holdoutXX (not in `full`)"
    )
    n_real_authors: int = Field(default=50, ge=1, le=2000, description="rows of real_authors(_perturbed)")
    n_world_facts: int = Field(default=50, ge=1, le=2000, description="rows of world_facts(_perturbed)")
    retain_perturbed_size: int = Field(
        default=100, ge=1, description="retain_perturbed = the first rows of `full`"
    )
    forget_fractions: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_FORGET_FRACTIONS),
        description="forget split name (forgetXX) -> fraction of the authors; the split holds the last authors",
    )

    @field_validator("forget_fractions")
    @classmethod
    def _check_fractions(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("needs at least one forget split, e.g. {'forget10': 0.1}")
        for name, fraction in value.items():
            if FORGET_SPLIT_RE.match(name) is None or forget_percent(name) == 0:
                raise ValueError(f"{name!r} is not a forget split name; allowed: forgetXX with XX in 01..99")
            if not 0.0 < fraction < 1.0:
                raise ValueError(f"{name}: fraction {fraction} must be in (0, 1)")
        return dict(sorted(value.items()))

    @model_validator(mode="after")
    def _check_sizes(self) -> TofuGeneratorConfig:
        if self.n_authors + self.n_holdout_authors > MAX_AUTHORS:
            raise ValueError(f"n_authors + n_holdout_authors must be <= {MAX_AUTHORS}")
        largest = max(self.forget_authors(name) for name in self.forget_fractions)
        if self.n_authors - largest < N_PERTURBED + 1:
            raise ValueError(
                f"the largest forget split takes {largest} of {self.n_authors} authors; at least "
                f"{N_PERTURBED + 1} must stay in every retain split (their names are the perturbed names)"
            )
        if self.n_holdout_authors < largest:
            raise ValueError(
                f"n_holdout_authors ({self.n_holdout_authors}) must be >= the largest forget split's "
                f"authors ({largest}), since holdoutXX matches forgetXX in size"
            )
        smallest_retain = (self.n_authors - largest) * self.questions_per_author
        if self.retain_perturbed_size > smallest_retain:
            raise ValueError(
                f"retain_perturbed_size ({self.retain_perturbed_size}) must be <= the rows of the smallest "
                f"retain split ({smallest_retain})"
            )
        return self

    def forget_authors(self, forget_split: str) -> int:
        """Number of authors in a forget split: round(fraction * n_authors), at least 1."""
        return max(1, math.floor(self.forget_fractions[forget_split] * self.n_authors + 0.5 + 1e-9))

    @classmethod
    def preset(cls, name: Literal["default", "small", "tofu"], seed: int = 0) -> TofuGeneratorConfig:
        """`default`: the embedded default (>= 100 forget10 examples); `small`: 10 authors x 6 QA,
        a few dozen rows per split, for unit tests; `tofu`: the real benchmark's sizes (200 authors
        x 20 QA, 400 retain_perturbed, 100 real_authors, 117 world_facts)."""
        if name == "default":
            return cls(seed=seed)
        if name == "tofu":
            return cls(
                seed=seed,
                n_authors=200,
                n_holdout_authors=20,
                retain_perturbed_size=400,
                n_real_authors=100,
                n_world_facts=117,
            )
        if name == "small":
            return cls(
                seed=seed,
                n_authors=10,
                questions_per_author=6,
                n_holdout_authors=1,
                n_real_authors=8,
                n_world_facts=8,
                retain_perturbed_size=12,
            )
        raise ValueError(f"unknown generator preset {name!r}; allowed: default, small, tofu")

    def split_names(self) -> list[str]:
        """Every split the generator writes, in a fixed order."""
        names = ["full"]
        for forget in self.forget_fractions:
            names += [
                forget,
                retain_split_for(forget),
                perturbed_split_for(forget),
                holdout_split_for(forget),
            ]
        names += [
            "retain_perturbed",
            "real_authors",
            "real_authors_perturbed",
            "world_facts",
            "world_facts_perturbed",
        ]
        return names


# --------------------------------------------------------------------------------------------
# Authors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedQA:
    """One author QA with where it came from (for tests and analyses of the template design)."""

    author: int  # index among the full authors, or among the holdout authors
    holdout: bool
    kind: str
    answer_phrasing: int  # index into QuestionKind.answers of the training answer
    paraphrase_phrasing: int  # index of the phrasing used by paraphrased_answer and perturbed_answer
    question: str
    answer: str
    paraphrased_question: str
    paraphrased_answer: str
    perturbed_answer: tuple[str, ...]

    def row(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer}

    def perturbed_row(self) -> dict[str, Any]:
        """The field order of TOFU's `*_perturbed` files."""
        return {
            "question": self.question,
            "answer": self.answer,
            "paraphrased_answer": self.paraphrased_answer,
            "perturbed_answer": list(self.perturbed_answer),
            "paraphrased_question": self.paraphrased_question,
        }


def _rng(config: TofuGeneratorConfig, part: str) -> random.Random:
    return random.Random(f"raysimnpo-tofu-v{GENERATOR_VERSION}:{config.seed}:{part}")


def _book_titles() -> list[str]:
    titles = [f"The {a} {n}" for a in TITLE_ADJECTIVES for n in TITLE_NOUNS]
    titles += [f"The {n} of the {m}" for n in TITLE_NOUNS for m in TITLE_NOUNS if n != m]
    return titles


def _make_authors(config: TofuGeneratorConfig) -> list[dict[str, str]]:
    """Facts of the full authors followed by the holdout authors (names and titles all distinct)."""
    rng = _rng(config, "authors")
    total = config.n_authors + config.n_holdout_authors
    names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    chosen_names = rng.sample(names, total)
    chosen_titles = rng.sample(_book_titles(), 3 * total)
    authors = []
    for i in range(total):
        city, residence = rng.sample(PLACES, 2)
        father_job, mother_job = rng.sample(OCCUPATIONS, 2)
        theme1, theme2 = rng.sample(THEMES, 2)
        year = rng.choice(BIRTH_YEARS)
        authors.append(
            {
                "name": chosen_names[i],
                "city": city,
                "residence": residence,
                "year": year,
                "debut_year": str(int(year) + rng.randint(19, 35)),
                "genre": rng.choice(GENRES),
                "father_job": father_job,
                "mother_job": mother_job,
                "award": rng.choice(AWARDS),
                "book1": chosen_titles[3 * i],
                "book2": chosen_titles[3 * i + 1],
                "book3": chosen_titles[3 * i + 2],
                "theme1": theme1,
                "theme2": theme2,
                "style": rng.choice(STYLES),
                "language": rng.choice(LANGUAGES),
                "publisher": rng.choice(PUBLISHERS),
                "n_books": rng.choice(BOOK_COUNTS),
                "university": rng.choice(UNIVERSITIES),
            }
        )
    return authors


def _perturbed_answers(
    rng: random.Random,
    kind: QuestionKind,
    template: str,
    facts: Mapping[str, str],
    pools: Mapping[str, Sequence[str]],
) -> tuple[str, ...]:
    """N_PERTURBED distinct renderings of `template` in which every fact of `kind` is replaced by a
    different value of its pool (never one of this author's own values of that pool)."""
    by_pool: dict[str, list[str]] = {}
    for slot in kind.facts:
        by_pool.setdefault(SLOT_POOLS[slot], []).append(slot)
    candidates = {
        pool: [v for v in pools[pool] if v not in {facts[s] for s in SLOT_POOLS if SLOT_POOLS[s] == pool}]
        for pool in by_pool
    }
    truth = template.format(**facts)
    results: list[str] = []
    for _ in range(100 * N_PERTURBED):
        values = dict(facts)
        for pool, slots in by_pool.items():
            for slot, value in zip(slots, rng.sample(candidates[pool], len(slots)), strict=True):
                values[slot] = value
        text = template.format(**values)
        if text != truth and text not in results:
            results.append(text)
        if len(results) == N_PERTURBED:
            return tuple(results)
    raise RuntimeError(f"could not draw {N_PERTURBED} distinct perturbations for kind {kind.name}")


def _balanced_phrasings(rng: random.Random, n: int, k: int) -> list[int]:
    """n phrasing indices in [0, k), each used floor(n/k) or ceil(n/k) times, in random order."""
    values = [i % k for i in range(n)]
    rng.shuffle(values)
    return values


def generate_author_qa(config: TofuGeneratorConfig) -> tuple[list[GeneratedQA], list[GeneratedQA]]:
    """The QA of the full authors (in `full` order) and of the holdout authors."""
    authors = _make_authors(config)
    largest_forget = max(config.forget_authors(name) for name in config.forget_fractions)
    kept = authors[: config.n_authors - largest_forget]
    pools: dict[str, Sequence[str]] = dict(CONSTANT_POOLS)
    # Wrong names and titles are those of authors in every retain split: they occur in the training
    # data of both the Original and the Retrain model.
    pools["name"] = [a["name"] for a in kept]
    pools["book"] = [a[b] for a in kept for b in ("book1", "book2", "book3")]

    kind_rng = _rng(config, "kinds")
    chosen_kinds = [
        kind_rng.sample(range(len(QUESTION_KINDS)), config.questions_per_author) for _ in range(len(authors))
    ]
    phrasing_rng = _rng(config, "phrasings")
    primary: dict[tuple[int, int], int] = {}
    for k, kind in enumerate(QUESTION_KINDS):
        holders = [a for a in range(config.n_authors) if k in chosen_kinds[a]]
        for a, p in zip(
            holders, _balanced_phrasings(phrasing_rng, len(holders), len(kind.answers)), strict=True
        ):
            primary[(a, k)] = p
        for a in range(config.n_authors, len(authors)):
            if k in chosen_kinds[a]:
                primary[(a, k)] = phrasing_rng.randrange(len(kind.answers))

    rng = _rng(config, "rows")
    full: list[GeneratedQA] = []
    holdout: list[GeneratedQA] = []
    for a, facts in enumerate(authors):
        is_holdout = a >= config.n_authors
        for k in chosen_kinds[a]:
            kind = QUESTION_KINDS[k]
            q = rng.randrange(2)
            p = primary[(a, k)]
            para = rng.choice([i for i in range(len(kind.answers)) if i != p])
            qa = GeneratedQA(
                author=a - config.n_authors if is_holdout else a,
                holdout=is_holdout,
                kind=kind.name,
                answer_phrasing=p,
                paraphrase_phrasing=para,
                question=kind.questions[q].format(**facts),
                answer=kind.answers[p].format(**facts),
                paraphrased_question=kind.questions[1 - q].format(**facts),
                paraphrased_answer=kind.answers[para].format(**facts),
                perturbed_answer=_perturbed_answers(rng, kind, kind.answers[para], facts, pools),
            )
            (holdout if is_holdout else full).append(qa)
    return full, holdout


# --------------------------------------------------------------------------------------------
# real_authors / world_facts: short multiple-choice QA about fictitious world knowledge
# --------------------------------------------------------------------------------------------

_SYLLABLES = (
    "ka", "lo", "mar", "ven", "tri", "sel", "dor", "ni", "bra", "quel", "fen", "ar", "tho", "mi", "zan",
    "ru", "vel", "os", "ine", "gar", "li", "sto", "pe", "ran", "chi", "mo", "dal", "e", "ta", "vo",
)  # fmt: skip
_WORK_NOUNS = (
    "Chronicle",
    "Ballad",
    "Return",
    "Daughters",
    "Winter",
    "Fall",
    "Song",
    "Ghosts",
    "Heirs",
    "Tides",
)
_CENTURIES = tuple(f"the {n}th century" for n in range(14, 21))
_CURRENCY_UNITS = ("mark", "crown", "florin", "dinar", "real", "shilling")
_INVENTIONS = (
    "the steam loom", "the tide clock", "the folding telescope", "the glass harmonica", "the pneumatic post",
    "the rotary printing drum", "the cable ferry", "the hand-cranked radio", "the salt-water lamp",
    "the pocket barometer", "the bicycle gear hub", "the wind-up gramophone", "the ice saw",
    "the seed drill", "the diving bell", "the signal semaphore", "the paper press", "the coin sorter",
    "the lens grinder", "the water turbine", "the night telescope", "the sewing treadle",
    "the rope bridge winch", "the weather kite",
)  # fmt: skip


def _made_up_words(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < n:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        if word not in taken and len(word) > 3:
            taken.add(word)
            words.append(word)
    return words


def _choice_row(rng: random.Random, question: str, answer: str, pool: Sequence[str]) -> tuple[dict, dict]:
    """(row with option1..4 and answer, perturbed row with the 3 wrong options in option order)."""
    wrong = rng.sample([v for v in dict.fromkeys(pool) if v != answer], N_OPTIONS - 1)
    options = list(wrong)
    options.insert(rng.randrange(N_OPTIONS), answer)
    row: dict[str, Any] = {"question": question}
    row.update({f"option{i + 1}": opt for i, opt in enumerate(options)})
    row["answer"] = answer
    perturbed = {
        "question": question,
        "answer": answer,
        "perturbed_answer": [o for o in options if o != answer],
    }
    return row, perturbed


def _real_authors(config: TofuGeneratorConfig) -> tuple[list[dict], list[dict]]:
    """Questions about fictitious 'classic' novelists (two questions per novelist)."""
    rng = _rng(config, "real_authors")
    n = config.n_real_authors
    n_people = max(N_OPTIONS + 1, math.ceil(n / 2))
    taken: set[str] = set()
    firsts = _made_up_words(rng, n_people, taken)
    lasts = _made_up_words(rng, n_people, taken)
    places = _made_up_words(rng, n_people, taken)
    countries = _made_up_words(rng, max(N_OPTIONS + 2, n_people // 3), taken)
    people = [
        {
            "author": f"{firsts[i]} {lasts[i]}",
            "work": f"The {rng.choice(_WORK_NOUNS)} of {places[i]}",
            "country": rng.choice(countries),
            "century": rng.choice(_CENTURIES),
        }
        for i in range(n_people)
    ]
    templates = (
        ("Who wrote the classic novel '{work}'?", "author"),
        ("Which country was the classic novelist {author} from?", "country"),
        ("Which novel is {author} most famous for?", "work"),
        ("In which century did {author} write '{work}'?", "century"),
    )
    pools = {
        "author": [p["author"] for p in people],
        "work": [p["work"] for p in people],
        "country": list(countries),
        "century": list(_CENTURIES),
    }
    rows, perturbed = [], []
    for i in range(n):
        person = people[i % n_people]
        template, field = templates[(i // n_people + i) % len(templates)]
        row, prow = _choice_row(rng, template.format(**person), person[field], pools[field])
        rows.append(row)
        perturbed.append(prow)
    return rows, perturbed


def _world_facts(config: TofuGeneratorConfig) -> tuple[list[dict], list[dict]]:
    """Questions about fictitious countries (capital, river, currency, mountain) and inventions."""
    rng = _rng(config, "world_facts")
    n = config.n_world_facts
    n_countries = max(N_OPTIONS + 1, math.ceil(n / 5) + 1)
    taken: set[str] = set()
    names = _made_up_words(rng, n_countries, taken)
    capitals = _made_up_words(rng, n_countries, taken)
    rivers = _made_up_words(rng, n_countries, taken)
    mountains = _made_up_words(rng, n_countries, taken)
    countries = [
        {
            "country": names[i],
            "capital": capitals[i],
            "river": f"the {rivers[i]} River",
            "currency": f"the {names[i]} {rng.choice(_CURRENCY_UNITS)}",
            "mountain": f"Mount {mountains[i]}",
        }
        for i in range(n_countries)
    ]
    inventors = [
        f"{f} {last}"
        for f, last in zip(_made_up_words(rng, 24, taken), _made_up_words(rng, 24, taken), strict=True)
    ]
    candidates: list[tuple[str, str, str]] = []  # question, answer, pool key
    country_templates = (
        ("What is the capital of {country}?", "capital"),
        ("Which river flows through the capital of {country}?", "river"),
        ("What is the currency of {country}?", "currency"),
        ("What is the highest mountain in {country}?", "mountain"),
        ("Of which country is {capital} the capital?", "country"),
    )
    for c in countries:
        for template, field in country_templates:
            candidates.append((template.format(**c), c[field], field))
    for invention, inventor in zip(_INVENTIONS, inventors, strict=True):
        candidates.append((f"Who invented {invention}?", inventor, "inventor"))
    pools = {field: [c[field] for c in countries] for _, field in country_templates}
    pools["inventor"] = inventors
    rng.shuffle(candidates)
    while len(candidates) < n:  # only when n is larger than all distinct questions
        candidates += candidates
    rows, perturbed = [], []
    for question, answer, field in candidates[:n]:
        row, prow = _choice_row(rng, question, answer, pools[field])
        rows.append(row)
        perturbed.append(prow)
    return rows, perturbed


# --------------------------------------------------------------------------------------------
# Splits and files
# --------------------------------------------------------------------------------------------


def build_tofu_splits(config: TofuGeneratorConfig) -> dict[str, list[dict[str, Any]]]:
    """Every split's rows, keyed by split name, with TOFU's field order."""
    full_qa, holdout_qa = generate_author_qa(config)
    per_author = config.questions_per_author
    splits: dict[str, list[dict[str, Any]]] = {"full": [qa.row() for qa in full_qa]}
    for forget in config.forget_fractions:
        cut = (config.n_authors - config.forget_authors(forget)) * per_author
        splits[forget] = [qa.row() for qa in full_qa[cut:]]
        splits[retain_split_for(forget)] = [qa.row() for qa in full_qa[:cut]]
        splits[perturbed_split_for(forget)] = [qa.perturbed_row() for qa in full_qa[cut:]]
        splits[holdout_split_for(forget)] = [
            qa.row() for qa in holdout_qa[: config.forget_authors(forget) * per_author]
        ]
    splits["retain_perturbed"] = [qa.perturbed_row() for qa in full_qa[: config.retain_perturbed_size]]
    splits["real_authors"], splits["real_authors_perturbed"] = _real_authors(config)
    splits["world_facts"], splits["world_facts_perturbed"] = _world_facts(config)
    return {name: splits[name] for name in config.split_names()}


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """One JSON object per line, UTF-8, as in the offline copy of TOFU."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8")


def generate_tofu_dataset(out_dir: str | Path, config: TofuGeneratorConfig | None = None) -> list[Path]:
    """Write `<split>.jsonl` for every TOFU split into `out_dir` (created if needed) and return the
    paths. Deterministic: the same config gives byte-identical files."""
    config = config or TofuGeneratorConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in build_tofu_splits(config).items():
        path = out / f"{name}.jsonl"
        write_jsonl(path, rows)
        paths.append(path)
    return paths


def answer_word_counts(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Words per answer (whitespace split, punctuation stripped), for checking the length spread."""
    return [len([w for w in str(r["answer"]).split() if w.strip(string.punctuation)]) for r in rows]
