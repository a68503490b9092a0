"""Generated input files, reproducible from a seed, cached under bench/out/."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from bench.harness import OUT

CONTACT_COLUMNS = [
    "client_id",
    "first_name",
    "last_name",
    "company",
    "home_phone",
    "mobile_phone",
    "postal_code",
    "state_province",
    "country",
    "balance",
]
_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Linus"]
_LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Perlman",
]
_STATES = [("NY", "100"), ("CA", "941"), ("TX", "733"), ("FL", "331"), ("AZ", "850"), ("IL", "606")]
_AREA = {"NY": "212", "CA": "415", "TX": "512", "FL": "305", "AZ": "602", "IL": "312"}


def contacts_csv(rows: int = 1_000_000, seed: int = 7) -> Path:
    """A contact file: 10 columns, 2 phones per row; 5 % of rows have no valid phone and
    10 % repeat an earlier row's client id (the import benchmark's input)."""
    path = OUT / f"contacts_v2_{rows}_{seed}.csv"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CONTACT_COLUMNS)
        for n in range(rows):
            state, postal = rng.choice(_STATES)
            area = _AREA[state]
            roll = rng.random()
            client = f"C{rng.randrange(max(1, n)):08d}" if roll < 0.10 else f"C{n:08d}"
            if 0.10 <= roll < 0.15:  # bad: neither phone is a number
                writer.writerow([client, "Bad", "Row", "", "555-01", "n/a", "", state, "US", "0"])
                continue
            writer.writerow(
                [
                    client,
                    rng.choice(_FIRST),
                    rng.choice(_LAST),
                    f"Company {rng.randrange(10_000)}",
                    f"({area}) 555-{rng.randrange(10_000):04d}",
                    f"+1{area}{rng.randrange(2_000_000, 9_999_999)}",
                    f"{postal}{rng.randrange(100):02d}",
                    state,
                    "US",
                    f"{rng.randrange(100_000) / 100:.2f}",
                ]
            )
    tmp.rename(path)
    return path


def dnc_file(numbers: int = 1_000_000, seed: int = 11) -> Path:
    """A US National DNC full file: one 10-digit number per line."""
    path = OUT / f"dnc_{numbers}_{seed}.txt"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    areas = list(_AREA.values())
    chosen: set[str] = set()
    while len(chosen) < numbers:
        chosen.add(f"{rng.choice(areas)}{rng.randrange(2_000_000, 9_999_999)}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(sorted(chosen)) + "\n")
    tmp.rename(path)
    return path
