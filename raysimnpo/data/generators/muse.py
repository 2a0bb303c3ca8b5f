"""A seeded generator of a fictitious news corpus in the layout of the MUSE hub datasets.

MUSE ("MUSE: Machine Unlearning Six-Way Evaluation for Language Models", Shi et al. 2024) publishes
`muse-bench/MUSE-News` and `muse-bench/MUSE-Books` with the configs

    raw       forget, retain1, retain2, holdout      {text}
    verbmem   forget                                 {prompt, gt}
    knowmem   forget_qa, retain_qa, forget_qa_icl, retain_qa_icl   {question, answer}
    privleak  forget, retain, holdout                {text}

This module writes the same configs, splits and fields from a seed (`<dir>/<config>/<split>.jsonl`),
so CPU runs and tests need no download. Every article reports a made-up local decision (a town, the
body that decided, its leader, a project, its cost, its opening year, and optional details: a critic
group, a building firm and its hires, a meeting place); articles have 2 to 8 body sentences, so their
lengths vary. Each article ends with a short `Question: ... / Answer: ...` box about its facts, so a
model trained on the raw text can also be asked about them (KnowMem). `verbmem/forget` cuts every
forget article's body after its first sentence: the prompt, and the rest of the body as the true
continuation. `knowmem/*_qa_icl` are the first `icl_shots` questions of the split (from different
articles) and are left out of `*_qa`. `retain2` is the retain set KnowMem and PrivLeak evaluate;
`retain1` is the retain set unlearning regularises on; `holdout` articles are never trained on.

Same config (and `GENERATOR_VERSION`) gives byte-identical files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from ...config.base import Frozen, Seed

GENERATOR_VERSION = 1

MUSE_LAYOUT: dict[str, tuple[str, ...]] = {
    "raw": ("forget", "retain1", "retain2", "holdout"),
    "verbmem": ("forget",),
    "knowmem": ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl"),
    "privleak": ("forget", "retain", "holdout"),
}
"""config -> splits of the MUSE hub datasets."""
MUSE_FIELDS: dict[str, tuple[str, ...]] = {
    "raw": ("text",),
    "verbmem": ("prompt", "gt"),
    "knowmem": ("question", "answer"),
    "privleak": ("text",),
}

_TOWN_HEADS = (
    "Quen",
    "Har",
    "Vel",
    "Dorn",
    "Ash",
    "Bram",
    "Cal",
    "Elm",
    "Fen",
    "Gar",
    "Hol",
    "Ister",
    "Kel",
    "Lun",
    "Mar",
    "Nor",
    "Orl",
    "Pell",
    "Rav",
    "Sel",
    "Tarn",
    "Ulm",
    "Wex",
    "Yar",
)
_TOWN_TAILS = ("by", "low", "mar", "wick", "ford", "stead", "mouth", "holm", "ton", "ley")
_FIRST = (
    "Mira",
    "Tomas",
    "Ilse",
    "Oren",
    "Petra",
    "Anselm",
    "Runa",
    "Caspar",
    "Lidia",
    "Bastian",
    "Noor",
    "Edda",
    "Felix",
    "Greta",
    "Hugo",
    "Ines",
    "Jasper",
    "Katja",
    "Lorenz",
    "Maren",
)
_LAST = (
    "Talvik",
    "Brennholt",
    "Osterlund",
    "Vasko",
    "Marrow",
    "Quillan",
    "Dunmore",
    "Hestvik",
    "Korra",
    "Lindqvist",
    "Pardoe",
    "Renwick",
    "Sandor",
    "Tiller",
    "Ulvang",
    "Weskett",
    "Yelland",
    "Zorn",
)
_BODIES = (
    "Transit Council",
    "Water Board",
    "Arts Trust",
    "Harbour Authority",
    "School Board",
    "Health Office",
    "Parks Committee",
    "Housing Agency",
)
_PROJECTS = (
    "tram line",
    "library",
    "bridge",
    "sea wall",
    "hospital wing",
    "solar farm",
    "museum",
    "ferry route",
    "stadium",
    "market hall",
    "swimming pool",
    "bus depot",
)
_ROLES = ("chair", "director", "spokesperson", "head")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_BENEFITS = (
    "bring visitors back to the old town",
    "cut travel times for commuters",
    "protect homes from storms",
    "give young people a place to meet",
    "lower energy bills for families",
    "create work for the harbour",
)
_GROUPS = ("Cyclists Union", "Residents Forum", "Shopkeepers Guild", "Teachers Association", "Fishers Club")
_ALTERNATIVES = ("schools", "road repairs", "care homes", "the fire service", "cheaper bus fares")
_FIRM_TAILS = ("and Sons", "Builders", "Works", "and Partners")
_VENUES = ("town hall", "old chapel", "harbour office", "community centre", "public library")


class MuseGeneratorConfig(Frozen):
    """Sizes of the generated MUSE-style corpus (articles per raw split) and its QA sets."""

    seed: Seed = 0
    forget_articles: int = Field(32, ge=4)
    retain_articles: int = Field(32, ge=4, description="articles in each of retain1 and retain2")
    holdout_articles: int = Field(32, ge=4)
    icl_shots: int = Field(2, ge=0, le=8, description="QA pairs of knowmem/*_qa_icl")


def _rng(config: MuseGeneratorConfig, part: str) -> random.Random:
    return random.Random(f"raysimnpo-muse-v{GENERATOR_VERSION}:{config.seed}:{part}")


def _towns(rng: random.Random, n: int) -> list[str]:
    names = [h + t for h in _TOWN_HEADS for t in _TOWN_TAILS]
    rng.shuffle(names)
    if n > len(names):
        raise ValueError(f"at most {len(names)} articles can be generated; asked for {n}")
    return names[:n]


def _article(rng: random.Random, town: str, year: int) -> tuple[str, str, str, list[tuple[str, str]]]:
    """(full text, first sentence, rest of the body, QA pairs) of one article about `town`."""
    body = f"the {town} {rng.choice(_BODIES)}"
    leader = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    surname = leader.split()[1]
    project = rng.choice(_PROJECTS)
    cost = rng.randint(3, 95)
    opens = year + rng.randint(1, 6)
    month = rng.choice(_MONTHS)
    first = (
        f"{town}, {month} {year}. {body[0].upper() + body[1:]} has approved a plan to build a new "
        f"{project} in {town}, its {rng.choice(_ROLES)} {leader} said on {rng.choice(_DAYS)}."
    )
    sentences = [f"The {project} will cost {cost} million crowns and is due to open in {opens}."]
    qa = [
        (f"Who leads {body}?", leader),
        (f"How much will the new {project} in {town} cost?", f"{cost} million crowns"),
        (f"When is the new {project} in {town} due to open?", f"in {opens}"),
    ]
    optional: list[tuple[str, tuple[str, str] | None]] = []
    group = f"the {town} {rng.choice(_GROUPS)}"
    optional.append(
        (
            f"Critics from {group} argued that the money should go to {rng.choice(_ALTERNATIVES)} instead.",
            (f"Who criticised the plan for the {project} in {town}?", group),
        )
    )
    firm = f"{rng.choice(_LAST)} {rng.choice(_FIRM_TAILS)}"
    hires = rng.randint(12, 400)
    optional.append(
        (
            f"The work will be carried out by {firm}, which expects to hire {hires} local workers.",
            (f"Which firm will build the new {project} in {town}?", firm),
        )
    )
    optional.append((f"{surname} said the {project} would {rng.choice(_BENEFITS)}.", None))
    venue = rng.choice(_VENUES)
    optional.append(
        (
            f"A public meeting about the plans will be held at the {venue} in {rng.choice(_MONTHS)}.",
            (f"Where will the public meeting about the {project} in {town} be held?", f"at the {venue}"),
        )
    )
    optional.append(
        (f"{body[0].upper() + body[1:]} last finished a large project in {year - rng.randint(3, 20)}.", None)
    )
    optional.append((f"Residents can comment on the design until the end of {rng.choice(_MONTHS)}.", None))
    rng.shuffle(optional)
    for sentence, pair in optional[: rng.randint(0, len(optional))]:
        sentences.append(sentence)
        if pair is not None:
            qa.append(pair)
    rest = " ".join(sentences)
    box = "\n\n".join(f"Question: {q}\nAnswer: {a}" for q, a in qa)
    return f"{first} {rest}\n\n{box}", first, rest, qa


def build_muse_splits(config: MuseGeneratorConfig) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """config -> split -> rows, in the MUSE hub layout (`MUSE_LAYOUT`, `MUSE_FIELDS`)."""
    sizes = {
        "forget": config.forget_articles,
        "retain1": config.retain_articles,
        "retain2": config.retain_articles,
        "holdout": config.holdout_articles,
    }
    towns = _towns(_rng(config, "towns"), sum(sizes.values()))
    articles: dict[str, list[tuple[str, str, str, list[tuple[str, str]]]]] = {}
    start = 0
    for split, n in sizes.items():
        rng = _rng(config, f"articles:{split}")
        articles[split] = [_article(rng, town, rng.randint(2019, 2024)) for town in towns[start : start + n]]
        start += n

    def qa_sets(split: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        pairs = [(i, q, a) for i, art in enumerate(articles[split]) for q, a in art[3]]
        icl_articles = set(range(config.icl_shots))
        icl = [
            {"question": art[3][0][0], "answer": art[3][0][1]} for art in articles[split][: config.icl_shots]
        ]
        rest = [{"question": q, "answer": a} for i, q, a in pairs if i not in icl_articles]
        return rest, icl

    forget_qa, forget_icl = qa_sets("forget")
    retain_qa, retain_icl = qa_sets("retain2")
    return {
        "raw": {split: [{"text": art[0]} for art in arts] for split, arts in articles.items()},
        "verbmem": {"forget": [{"prompt": art[1], "gt": art[2]} for art in articles["forget"]]},
        "knowmem": {
            "forget_qa": forget_qa,
            "retain_qa": retain_qa,
            "forget_qa_icl": forget_icl,
            "retain_qa_icl": retain_icl,
        },
        "privleak": {
            "forget": [{"text": art[0]} for art in articles["forget"]],
            "retain": [{"text": art[0]} for art in articles["retain2"]],
            "holdout": [{"text": art[0]} for art in articles["holdout"]],
        },
    }


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def write_config_splits(
    out_dir: str | Path, configs: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]
) -> list[Path]:
    """Write `<out_dir>/<config>/<split>.jsonl` for every config and split (a hub dataset's layout);
    returns the paths."""
    written = []
    for name, splits in configs.items():
        for split, rows in splits.items():
            path = Path(out_dir) / name / f"{split}.jsonl"
            write_jsonl(path, rows)
            written.append(path)
    return written


def generate_muse_dataset(out_dir: str | Path, config: MuseGeneratorConfig | None = None) -> list[Path]:
    """Write `<out_dir>/<config>/<split>.jsonl` for every MUSE config and split; returns the paths."""
    return write_config_splits(out_dir, build_muse_splits(config or MuseGeneratorConfig()))
