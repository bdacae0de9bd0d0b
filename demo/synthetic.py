"""Deterministic synthetic demo source database: entirely FAKE UK benefits data.

Nothing here is, or is derived from, real personal data. Names come from short built-in lists,
National Insurance numbers are drawn (without replacement) from the valid NINO *format* space by a
keyed permutation, and postcodes are made of real postcode districts plus random inward codes, so
they look right but do not identify anyone.

Generation is vectorised with numpy in fixed-size internal blocks of people. Each block has its own
random stream derived from ``(seed, block index)``, so the output depends only on
``(n_people, seed)`` -- never on ``batch_rows`` -- and memory stays bounded by the block and batch
sizes however many people are generated.

Two tables are produced (identical definitions on SQLite, PostgreSQL and MariaDB):

* ``claimants`` -- one row per person, ids ``1..n_people``.
* ``payments`` -- 0-8 payments per claimant (about 3 on average), dated inside the claim period
  (claim_start .. claim_end, or :data:`REFERENCE_DATE` for ongoing claims).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import sqlalchemy as sa

from core.streams import rebatch

__all__ = [
    "BENEFIT_CODES",
    "CLAIMANTS_SCHEMA",
    "DEFAULT_PEOPLE",
    "DEFAULT_SEED",
    "MAX_PEOPLE",
    "PAYMENTS_SCHEMA",
    "POSTCODE_AREA_REGION",
    "REFERENCE_DATE",
    "REGIONS",
    "claimant_batches",
    "demo_metadata",
    "payment_batches",
    "write_demo_source",
]

DEFAULT_PEOPLE = 100_000
DEFAULT_SEED = 20261125
#: "Today" for the demo world: ongoing claims are paid up to this date; no claim starts after it.
REFERENCE_DATE = dt.date(2026, 10, 31)
#: Upper bound on ``n_people`` (keeps payment ids inside a 32-bit INTEGER column).
MAX_PEOPLE = 250_000_000

# People are generated in blocks of this many; each block has its own random stream. Changing it
# changes the generated data, so it is part of the determinism contract -- do not tune it.
_BLOCK = 16_384
_MAX_PAYMENTS = 8
_PAYMENT_P = 3 / 8  # binomial(8, 3/8): mean 3 payments per claimant

_EPOCH = dt.date(1970, 1, 1)


def _days(d: dt.date) -> int:
    return (d - _EPOCH).days


def _years(n: float) -> int:
    return round(n * 365.2425)


_REF = _days(REFERENCE_DATE)
_CLAIMS_FROM = _days(dt.date(2015, 1, 1))

# ---------------------------------------------------------------------------------------------
# Arrow schemas
# ---------------------------------------------------------------------------------------------
_MONEY = pa.decimal128(8, 2)

CLAIMANTS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("nino", pa.string(), nullable=False),
        pa.field("first_name", pa.string(), nullable=False),
        pa.field("last_name", pa.string(), nullable=False),
        pa.field("date_of_birth", pa.date32(), nullable=False),
        pa.field("sex", pa.string(), nullable=False),
        pa.field("postcode", pa.string(), nullable=False),
        pa.field("region", pa.string(), nullable=False),
        pa.field("benefit_code", pa.string(), nullable=False),
        pa.field("weekly_amount", _MONEY, nullable=False),
        pa.field("claim_start", pa.date32(), nullable=False),
        pa.field("claim_end", pa.date32(), nullable=True),
    ]
)

PAYMENTS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("claimant_id", pa.int64(), nullable=False),
        pa.field("paid_on", pa.date32(), nullable=False),
        pa.field("amount", _MONEY, nullable=False),
    ]
)

# ---------------------------------------------------------------------------------------------
# Built-in reference lists (fake people, real-format codes)
# ---------------------------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return text.split()


_FEMALE_NAMES = _words("""
Olivia Amelia Isla Ava Mia Ivy Lily Isabella Rosie Sophia Grace Willow Freya Florence Emily Ella
Poppy Evie Elsie Charlotte Evelyn Sienna Sofia Daisy Phoebe Sophie Alice Harper Matilda Ruby Emilia
Maya Millie Isabelle Eva Luna Jessica Aria Lucy Ellie Chloe Hannah Layla Scarlett Zara Esme Imogen
Erin Holly Lola Mary Margaret Patricia Susan Linda Elizabeth Barbara Janet Christine Carol Sandra
Karen Julie Helen Jacqueline Angela Pauline Gillian Joanne Sarah Nicola Claire Emma Rachel Rebecca
Laura Amy Gemma Kelly Louise Michelle Lisa Donna Tracey Dawn Wendy Sharon Deborah Lorraine Joan
Dorothy Doreen Irene Sheila Brenda Jean Maureen Shirley Valerie Ann Anne Diane Denise Caroline
Samantha Natalie Victoria Katie Hayley Stacey Jade Leanne Kirsty Aisha Fatima Amira Priya Anjali
Sana Maryam Zainab Ayesha Noor Siobhan Niamh Aoife Catriona Morag Eilidh Rhiannon Cerys Sian
Bethan Megan Ffion Agnieszka Katarzyna Oksana Chidinma Abimbola Yasmin Shabana Parveen Nasreen
Kathleen Eileen Marion Rita Sylvia Beryl Hilda Edna Vera Gladys Audrey Marjorie Judith Heather
Fiona Alison Lesley Yvonne Beverley Andrea Zoe Kerry Charlene Danielle Naomi Abigail Bethany Lauren
""")

_MALE_NAMES = _words("""
Oliver George Arthur Noah Muhammad Leo Oscar Harry Archie Jack Henry Charlie Freddie Theodore Thomas
Finley Theo Alfie Jacob William Isaac Tommy Joshua James Lucas Alexander Arlo Teddy Edward Max
Samuel Benjamin Daniel Joseph Ethan Logan Mason Reuben Harrison Sebastian John David Michael Peter
Robert Paul Andrew Mark Stephen Richard Christopher Anthony Ian Kevin Gary Steven Brian Alan Colin
Keith Graham Barry Trevor Derek Kenneth Raymond Dennis Roy Terence Frank Stanley Albert Ernest
Leslie Malcolm Neil Martin Simon Philip Nigel Darren Lee Craig Wayne Dean Jason Scott Matthew Adam
Luke Ryan Liam Connor Callum Jamie Kyle Nathan Aaron Jordan Bradley Jake Kieran Mohammed Ahmed Ali
Hassan Imran Tariq Bilal Yusuf Omar Ravi Sanjay Arjun Rajesh Amit Vikram Gurpreet Harjit Sean
Ciaran Declan Patrick Hamish Angus Fraser Euan Gareth Rhys Dylan Owain Dafydd Emeka Chukwudi Kwame
Tomasz Piotr Marek Andrei Gordon Douglas Stuart Alistair Duncan Kenny Ronald Donald Geoffrey Gerald
Norman Harold Walter Herbert Sidney Cyril Clifford Arnold Maurice Bernard Roger Clive Howard Russell
Jonathan Timothy Nicholas Jeremy Julian Marcus Adrian Carl Shaun Glenn Stuart Ross Gavin Dale
""")

_LAST_NAMES = _words("""
Smith Jones Williams Taylor Brown Davies Evans Wilson Thomas Johnson Roberts Robinson Thompson
Wright Walker White Edwards Hughes Green Hall Lewis Harris Clarke Patel Jackson Wood Turner Martin
Cooper Hill Ward Morris Moore Clark Lee King Baker Harrison Morgan Allen James Scott Phillips Watson
Davis Parker Price Bennett Young Griffiths Mitchell Kelly Cook Carter Richardson Bailey Collins Bell
Shaw Murphy Miller Cox Richards Khan Marshall Anderson Simpson Ellis Adams Singh Begum Wilkinson
Foster Chapman Powell Webb Rogers Gray Mason Ali Hunt Hussain Campbell Matthews Owen Palmer Holmes
Mills Barnes Knight Lloyd Butler Russell Barker Fisher Stevens Jenkins Murray Dixon Harvey Graham
Pearson Ahmed Fletcher Walsh Kaur Gibson Howard Andrews Stewart Elliott Reynolds Saunders Payne Fox
Ford Pearce Day Brooks West Lawrence Cole Atkinson Bradley Spencer Gill Dawson Ball Burton O'Brien
Watts Rose Booth Perry Ryan Grant Wells Armstrong Francis Rees Hayes Hart Hudson Newman Barrett
Webster Hunter Gregory Carr Lowe Page Marsh Riley Dunn Woods Parsons Berry Stone Reid Holland
Hawkins Harding Porter Robertson Newton Oliver Reed Kennedy Williamson Bird Gardner Shah Dean Lane
Cooke Bates Henderson Parry Burgess Bishop Walton Burns Nicholson Shepherd Ross Cross Long Freeman
Warren Nicholls Hamilton Byrne Sutton McDonald Yates Hodgson Robson Curtis Hopkins O'Connor Harper
Coleman Watkins Moss McCarthy Chambers O'Neill Griffin Sharp Hardy Wheeler Potter Osborne Johnston
Gordon Doyle Wallace George Jordan Hutchinson Rowe Burke May Pritchard Gilbert Willis Higgins Read
Miles Stevenson Stephenson Hammond Arnold Buckley Walters Hewitt Barber Nelson Slater Austin
Sullivan Whitehead Mann Frost Lambert Stephens Blake Akhtar Lynch Goodwin Barton Woodward Thomson
Cunningham Quinn Barnett Baxter Bibi Clayton Nash Greenwood Jennings Holt Kemp Poole Gallagher Bond
Stokes Tucker Davidson Fowler Heath Norman Middleton Lawson Banks French Stanley Jarvis Gibbs
Ferguson Hayward Carroll Farrell Nowak Kowalski Mahmood Iqbal Chowdhury Rahman Okafor Adeyemi
Mensah Chen Wang Nguyen Sharma Mistry Chauhan MacLeod Fraser Sinclair Macdonald Morrison Paterson
""")

# Deduplicate while keeping order (the order is part of the determinism contract).
_FEMALE_NAMES = list(dict.fromkeys(_FEMALE_NAMES))
_MALE_NAMES = list(dict.fromkeys(_MALE_NAMES))
_LAST_NAMES = list(dict.fromkeys(_LAST_NAMES))

# Real postcode areas and districts, by region. Only districts lying wholly inside the region are
# listed, and every area belongs to exactly one region, so region always agrees with the postcode
# area. Weights are approximate relative populations. District specs: "a-b" is a numeric range,
# anything else (e.g. "1A") is a literal district suffix.
_POSTCODE_TABLE: dict[str, tuple[float, dict[str, str]]] = {
    "North East": (2.7, {
        "NE": "1-13,15-43,61-66", "DH": "1-9", "SR": "1-8", "TS": "1-8,10-12,14,16-29",
        "DL": "1-5,12-17",
    }),
    "North West": (7.5, {
        "M": "1-9,11-35,38,40,41,43-46,50", "L": "1-40", "WA": "1-16", "WN": "1-8", "BL": "0-9",
        "OL": "1-12,15,16", "SK": "1-12,14-16", "PR": "1-9,25,26", "BB": "1-12", "FY": "1-8",
        "LA": "1,3-5,7-23", "CA": "1-28", "CW": "1-12", "CH": "1-3,41-49,60-66",
    }),
    "Yorkshire and The Humber": (5.5, {
        "LS": "1-29", "BD": "1-24", "S": "1-14,20,25,26,35,36,60-66,70-75", "HD": "1-9",
        "HX": "1-7", "WF": "1-17", "HG": "1-5", "YO": "1,7,8,10-19,21-26,30-32,41-43,51,60-62",
        "HU": "1-20", "DN": "1-12",
    }),
    "East Midlands": (4.9, {
        "NG": "1-25,31-34", "DE": "1-7,21-24,55,56,65,72-75", "LE": "1-19,65,67",
        "NN": "1-18,29", "LN": "1-13",
    }),
    "West Midlands": (6.0, {
        "B": "1-21,23-38,40,42-50,60-80,90-98", "CV": "1-8,10-12,21,22,31-35,37", "WV": "1-16",
        "WS": "1-15", "DY": "1-14", "ST": "1-13,15-21", "WR": "1-10,13-15", "HR": "1,2,4,6-9",
        "TF": "1-13",
    }),
    "East of England": (6.4, {
        "CB": "1-11,21-25", "NR": "1-35", "IP": "1-33", "CO": "1-16", "CM": "0-24,77",
        "SS": "0-17", "LU": "1-6", "AL": "1-10", "SG": "1-19",
    }),
    "London": (8.9, {
        "E": "1,1W,2-18,20", "N": "1-22", "NW": "1-11", "SE": "1-28",
        "SW": "1A,1E,1H,1P,1V,1W,1X,1Y,2-20",
        "W": "1B,1C,1D,1F,1G,1H,1J,1K,1S,1T,1U,1W,2-14",
        "EC": "1A,1M,1N,1R,1V,1Y,2A,2M,2N,2R,2V,2Y,3A,3M,3N,3R,3V,4A,4M,4N,4R,4V,4Y",
        "WC": "1A,1B,1E,1H,1N,1R,1V,1X,2A,2B,2E,2H,2N,2R",
        "CR": "0,2,4,7,8", "BR": "1-5,7", "HA": "0-9", "UB": "1-8,10,11", "TW": "1-14",
        "IG": "1-6,8,11", "RM": "1-3,5-13", "SM": "1-6",
    }),
    "South East": (9.4, {
        "BN": "1-27,41-45", "RH": "1-20", "GU": "1-35",
        "OX": "1-6,10-14,18,20,25-29,33,44,49", "RG": "1-12,14,18,19,21-31,40-42,45",
        "SL": "1-9", "SO": "14-24,30-32,40-45,50-53", "PO": "1-22,30-41", "CT": "1-21",
        "ME": "1-20", "TN": "1-31,33-40",
    }),
    "South West": (5.8, {
        "BS": "1-16,20-41,48,49", "BA": "1-22", "EX": "1-39", "PL": "1-35", "TR": "1-27",
        "TQ": "1-14", "TA": "1-24", "GL": "1-20,50-54", "SN": "1-5,8-16,25,26",
        "SP": "1-5,7,8", "BH": "1-23", "DT": "1-11",
    }),
    "Wales": (3.1, {
        "CF": "3,5,10,11,14,15,23,24,31-48,61-64,71,72,81-83", "SA": "1-20,31-48,61-73",
        "NP": "4,7,10-15,18-24,44", "LL": "11-78", "LD": "1-7",
    }),
    "Scotland": (5.5, {
        "EH": "1-55", "G": "1-5,11-15,20-23,31-34,40-46,51-53,60-69,71-79,81-84",
        "AB": "10-16,21-25,30-45,51-56", "DD": "1-11", "KY": "1-16", "FK": "1-21",
        "PA": "1-49", "IV": "1-28,30-32,36,40-56,63", "ML": "1-12", "KA": "1-30",
        "DG": "1-16", "PH": "1-26,30-44,49,50",
    }),
}


def _expand_districts(area: str, spec: str) -> list[str]:
    out: list[str] = []
    for token in spec.split(","):
        lo, sep, hi = token.partition("-")
        if sep:
            out.extend(f"{area}{i}" for i in range(int(lo), int(hi) + 1))
        else:
            out.append(f"{area}{token}")
    return out


REGIONS: tuple[str, ...] = tuple(_POSTCODE_TABLE)
#: Postcode area (letters of the outward code) -> region. Each area maps to exactly one region.
POSTCODE_AREA_REGION: dict[str, str] = {
    area: region for region, (_, areas) in _POSTCODE_TABLE.items() for area in areas
}
_REGION_WEIGHTS = np.array([w for w, _ in _POSTCODE_TABLE.values()], dtype=np.float64)
_REGION_WEIGHTS /= _REGION_WEIGHTS.sum()
_DISTRICTS_BY_REGION = [
    [d for area, spec in areas.items() for d in _expand_districts(area, spec)]
    for _, areas in _POSTCODE_TABLE.values()
]
_DISTRICTS = pa.array([d for ds in _DISTRICTS_BY_REGION for d in ds], pa.string())
_REGION_DISTRICT_COUNT = np.array([len(ds) for ds in _DISTRICTS_BY_REGION], dtype=np.int64)
_REGION_DISTRICT_OFFSET = np.concatenate([[0], np.cumsum(_REGION_DISTRICT_COUNT)[:-1]])
# Inward code: digit + two letters, never C I K M O V.
_INWARD_LETTERS = np.frombuffer(b"ABDEFGHJLNPQRSTUWXYZ", dtype=np.uint8)

# NINO prefixes: first letter not D F I Q U V; second not D F I O Q U V; some pairs never used.
_NINO_FIRST = "ABCEGHJKLMNOPRSTWXYZ"
_NINO_SECOND = "ABCEGHJKLMNPRSTWXYZ"
_NINO_BANNED = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})
_NINO_PREFIXES = [a + b for a in _NINO_FIRST for b in _NINO_SECOND if a + b not in _NINO_BANNED]
_NINO_PREFIX_BYTES = np.frombuffer("".join(_NINO_PREFIXES).encode(), dtype=np.uint8).reshape(-1, 2)
_NINO_SPACE = len(_NINO_PREFIXES) * 1_000_000  # 373 prefixes x 000000-999999
assert _NINO_SPACE <= 1 << 29  # domain of the Feistel permutation below


# Benefits: code, relative frequency, date-of-birth range, age window at claim start, probability
# the claim is still ongoing, mean length of ended claims (days), weekly amount model (fixed rates
# in pence, or a uniform range with probability p_range), weeks of benefit per payment.
class _Benefit:
    def __init__(
        self,
        code: str,
        weight: float,
        dob: tuple[dt.date, dt.date],
        age: tuple[float, float],
        p_ongoing: float,
        mean_days: float,
        rates: tuple[int, ...],
        pay_weeks: float,
        amount_range: tuple[int, int] = (0, 0),
        p_range: float = 0.0,
    ) -> None:
        self.code, self.weight, self.p_ongoing, self.mean_days = code, weight, p_ongoing, mean_days
        self.dob_lo, self.dob_hi = _days(dob[0]), _days(dob[1])
        self.min_age, self.max_age = _years(age[0]), _years(age[1])
        self.rates, self.pay_weeks = rates, pay_weeks
        self.amount_range, self.p_range = amount_range, p_range


_NO_MAX = 200.0
_BENEFITS = (
    _Benefit("SP", 0.30, (dt.date(1940, 1, 1), dt.date(1960, 3, 31)), (66, _NO_MAX), 0.88, 2000,
             (23025, 23025, 17645), 4, amount_range=(9000, 23025), p_range=0.4),
    _Benefit("UC", 0.28, (dt.date(1952, 1, 1), dt.date(2006, 12, 31)), (18, 66), 0.62, 400,
             (), 52 / 12, amount_range=(4000, 42000), p_range=1.0),
    _Benefit("PIP", 0.14, (dt.date(1958, 1, 1), dt.date(2006, 12, 31)), (16, 66), 0.66, 900,
             (7390, 11040, 2920, 7705, 10310, 15095, 13960, 18745), 4),
    _Benefit("ESA", 0.07, (dt.date(1960, 1, 1), dt.date(2006, 12, 31)), (16, 66), 0.45, 700,
             (9205, 9205, 14055, 14055, 14055), 2),
    _Benefit("AA", 0.06, (dt.date(1940, 1, 1), dt.date(1958, 12, 31)), (66, _NO_MAX), 0.60, 900,
             (7390, 11040), 4),
    _Benefit("CA", 0.06, (dt.date(1955, 1, 1), dt.date(2006, 12, 31)), (16, _NO_MAX), 0.55, 800,
             (8330,), 4),
    _Benefit("DLA", 0.05, (dt.date(2000, 1, 1), dt.date(2006, 12, 31)), (0, 16), 0.40, 1200,
             (2920, 7390, 11040, 5840, 10310, 13960, 7705, 10625, 15095, 18745), 4),
    _Benefit("JSA", 0.04, (dt.date(1960, 1, 1), dt.date(2006, 12, 31)), (18, 66), 0.15, 120,
             (7290, 9205, 9205), 2),
)
BENEFIT_CODES: tuple[str, ...] = tuple(b.code for b in _BENEFITS)
_BENEFIT_WEIGHTS = np.array([b.weight for b in _BENEFITS])
_BENEFIT_WEIGHTS /= _BENEFIT_WEIGHTS.sum()


def _per_benefit(attr: str, dtype: Any = np.int64) -> np.ndarray:
    return np.array([getattr(b, attr) for b in _BENEFITS], dtype=dtype)


_B_DOB_LO, _B_DOB_HI = _per_benefit("dob_lo"), _per_benefit("dob_hi")
_B_MIN_AGE, _B_MAX_AGE = _per_benefit("min_age"), _per_benefit("max_age")
_B_P_ONGOING = _per_benefit("p_ongoing", np.float64)
_B_MEAN_DAYS = _per_benefit("mean_days", np.float64)
_B_PAY_WEEKS = _per_benefit("pay_weeks", np.float64)
_B_P_RANGE = _per_benefit("p_range", np.float64)
_B_RANGE_LO = np.array([b.amount_range[0] for b in _BENEFITS], dtype=np.int64)
_B_RANGE_HI = np.array([b.amount_range[1] for b in _BENEFITS], dtype=np.int64)
_B_RATE_COUNT = np.array([max(len(b.rates), 1) for b in _BENEFITS], dtype=np.int64)
_B_RATE_OFFSET = np.concatenate([[0], np.cumsum(_B_RATE_COUNT)[:-1]])
_B_RATES = np.array([r for b in _BENEFITS for r in (b.rates or (0,))], dtype=np.int64)

_SEX = pa.array(["F", "M"], pa.string())
_FIRST = pa.array(_FEMALE_NAMES + _MALE_NAMES, pa.string())
_LAST = pa.array(_LAST_NAMES, pa.string())
_REGION_ARR = pa.array(list(REGIONS), pa.string())
_BENEFIT_ARR = pa.array(list(BENEFIT_CODES), pa.string())


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
def _rng(seed: int, block: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(block, stream))))


def _nino_keys(seed: int) -> np.ndarray:
    return np.random.SeedSequence(seed, spawn_key=(0x4E494E4F,)).generate_state(8, dtype=np.uint64)


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """64-bit avalanche hash (splitmix64 finaliser) of ``x ^ key``."""
    z = x ^ key
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _nino_numbers(index: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Keyed permutation of ``[0, _NINO_SPACE)``: a 29-bit Feistel network with cycle walking.

    Distinct person indexes therefore always get distinct NINOs (sampling without replacement),
    computed independently per person so the result does not depend on batching.
    """
    lo_bits = np.uint64(14)  # left half 15 bits, right half 14 bits: 29-bit domain
    lo_mask, hi_mask = np.uint64((1 << 14) - 1), np.uint64((1 << 15) - 1)

    def feistel(v: np.ndarray) -> np.ndarray:
        left, right = v >> lo_bits, v & lo_mask
        for i, key in enumerate(keys):
            if i % 2 == 0:
                left = left ^ (_mix(right, key) & hi_mask)
            else:
                right = right ^ (_mix(left, key) & lo_mask)
        return (left << lo_bits) | right

    v = feistel(index.astype(np.uint64))
    todo = np.flatnonzero(v >= _NINO_SPACE)
    while todo.size:  # cycle walking: re-encrypt until inside the domain
        w = feistel(v[todo])
        v[todo] = w
        todo = todo[w >= _NINO_SPACE]
    return v.astype(np.int64)


class _People:
    """Numeric per-person attributes of one block (shared by claimants and payments)."""

    def __init__(self, seed: int, block: int, n_people: int) -> None:
        first_id = block * _BLOCK + 1
        n = min(_BLOCK, n_people - block * _BLOCK)
        rng = _rng(seed, block, 0)
        # Fixed draw order, always for a full block (then truncated), so person k is the same for
        # any n_people >= k and any batching.
        size = _BLOCK
        benefit = rng.choice(len(_BENEFITS), size=size, p=_BENEFIT_WEIGHTS)[:n]
        female = (rng.random(size) < 0.51)[:n]
        u_dob, u_start, u_ongoing = rng.random(size)[:n], rng.random(size)[:n], rng.random(size)[:n]
        duration = rng.exponential(1.0, size)[:n] * _B_MEAN_DAYS[benefit]
        u_end, u_amount, u_range = rng.random(size)[:n], rng.random(size)[:n], rng.random(size)[:n]
        u_first = rng.random(size)[:n]
        last_idx = rng.integers(0, len(_LAST_NAMES), size)[:n]
        region = rng.choice(len(REGIONS), size=size, p=_REGION_WEIGHTS)[:n]
        u_district = rng.random(size)[:n]
        inward = np.empty((n, 3), dtype=np.uint8)
        inward[:, 0] = rng.integers(0, 10, size)[:n] + ord("0")
        inward[:, 1:] = _INWARD_LETTERS[rng.integers(0, len(_INWARD_LETTERS), (size, 2))[:n]]
        nino_suffix = rng.integers(0, 4, size)[:n]

        self.n = n
        self.ids = np.arange(first_id, first_id + n, dtype=np.int64)
        self.benefit = benefit
        self.female = female
        dob_lo, dob_hi = _B_DOB_LO[benefit], _B_DOB_HI[benefit]
        self.dob = dob_lo + (u_dob * (dob_hi - dob_lo + 1)).astype(np.int64)
        # Claim starts inside the benefit's age window and 2015-01-01 .. REFERENCE_DATE.
        start_lo = np.maximum(_CLAIMS_FROM, self.dob + _B_MIN_AGE[benefit])
        limit = np.minimum(_REF, self.dob + _B_MAX_AGE[benefit])  # claim cannot run past this
        start_hi = np.maximum(limit, start_lo)
        self.start = start_lo + (u_start * (start_hi - start_lo + 1)).astype(np.int64)
        limit = np.maximum(limit, self.start)
        # Ongoing unless it ended by chance, or the person aged out of the benefit before "today".
        self.ongoing = (u_ongoing < _B_P_ONGOING[benefit]) & (limit >= _REF)
        end = self.start + duration.astype(np.int64)
        wrapped = self.start + (u_end * (limit - self.start + 1)).astype(np.int64)
        end = np.where(end <= limit, end, wrapped)
        end = np.where(self.ongoing, _REF, end)
        self.end = end  # REFERENCE_DATE for ongoing claims
        rate = _B_RATES[_B_RATE_OFFSET[benefit] + (u_amount * _B_RATE_COUNT[benefit]).astype(np.int64)]
        lo, hi = _B_RANGE_LO[benefit], _B_RANGE_HI[benefit]
        ranged = lo + (u_amount * (hi - lo + 1)).astype(np.int64)
        self.weekly_pence = np.where(u_range < _B_P_RANGE[benefit], ranged, rate)

        self._u_first = u_first
        self._last_idx = last_idx
        self._region = region
        self._u_district = u_district
        self._inward = inward
        self._nino_suffix = nino_suffix

    def claimants(self, seed: int) -> pa.RecordBatch:
        n = self.n
        nino = np.empty((n, 9), dtype=np.uint8)
        number = _nino_numbers(self.ids - 1, _nino_keys(seed))
        prefix, digits = number // 1_000_000, number % 1_000_000
        nino[:, :2] = _NINO_PREFIX_BYTES[prefix]
        for pos in range(6):
            nino[:, 2 + pos] = (digits // 10 ** (5 - pos)) % 10 + ord("0")
        nino[:, 8] = self._nino_suffix + ord("A")

        n_f, n_m = len(_FEMALE_NAMES), len(_MALE_NAMES)
        first_idx = np.where(
            self.female,
            (self._u_first * n_f).astype(np.int64),
            n_f + (self._u_first * n_m).astype(np.int64),
        )
        district = _REGION_DISTRICT_OFFSET[self._region] + (
            self._u_district * _REGION_DISTRICT_COUNT[self._region]
        ).astype(np.int64)
        postcode = pc.binary_join_element_wise(
            _DISTRICTS.take(pa.array(district)), _fixed_width_strings(self._inward), " "
        )
        arrays = [
            pa.array(self.ids, pa.int64()),
            _fixed_width_strings(nino),
            _FIRST.take(pa.array(first_idx)),
            _LAST.take(pa.array(self._last_idx)),
            _date32(self.dob),
            _SEX.take(pa.array((~self.female).astype(np.int64))),
            postcode,
            _REGION_ARR.take(pa.array(self._region)),
            _BENEFIT_ARR.take(pa.array(self.benefit)),
            _money(self.weekly_pence),
            _date32(self.start),
            _date32(np.where(self.ongoing, 0, self.end), null_mask=self.ongoing),
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=CLAIMANTS_SCHEMA)

    def payments(self, seed: int, block: int, first_payment_id: int) -> pa.RecordBatch:
        rng = _rng(seed, block, 1)
        counts = rng.binomial(_MAX_PAYMENTS, _PAYMENT_P, _BLOCK)  # full block, as in __init__
        u_paid = rng.random(int(counts.sum()))
        counts = counts[: self.n]
        total = int(counts.sum())
        u_paid = u_paid[:total]
        owner = np.repeat(np.arange(self.n), counts)
        start, end = self.start[owner], self.end[owner]
        paid_on = start + (u_paid * (end - start + 1)).astype(np.int64)
        order = np.lexsort((paid_on, owner))  # by claimant, then date
        owner, paid_on = owner[order], paid_on[order]
        amount = np.rint(self.weekly_pence[owner] * _B_PAY_WEEKS[self.benefit[owner]]).astype(np.int64)
        arrays = [
            pa.array(np.arange(first_payment_id, first_payment_id + total, dtype=np.int64)),
            pa.array(self.ids[owner]),
            _date32(paid_on),
            _money(amount),
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=PAYMENTS_SCHEMA)


def _fixed_width_strings(chars: np.ndarray) -> pa.Array:
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    data = np.ascontiguousarray(chars, dtype=np.uint8)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _date32(days: np.ndarray, null_mask: np.ndarray | None = None) -> pa.Array:
    mask = null_mask if null_mask is not None and null_mask.any() else None
    return pa.array(days.astype(np.int32), type=pa.date32(), mask=mask)


def _money(pence: np.ndarray) -> pa.Array:
    """decimal128(8,2) from integer pence, built directly from little-endian int128 words."""
    words = np.empty((len(pence), 2), dtype="<i8")
    words[:, 0] = pence
    words[:, 1] = np.where(pence < 0, -1, 0)
    return pa.Array.from_buffers(_MONEY, len(pence), [None, pa.py_buffer(words)])


def _check_args(n_people: int, seed: int, batch_rows: int) -> None:
    if not 0 <= n_people <= MAX_PEOPLE:
        raise ValueError(f"n_people must be between 0 and {MAX_PEOPLE:,}, got {n_people!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows!r}")


def _n_blocks(n_people: int) -> int:
    return -(-n_people // _BLOCK)


def claimant_batches(
    n_people: int, seed: int = DEFAULT_SEED, batch_rows: int = 50_000
) -> Iterator[pa.RecordBatch]:
    """Stream the ``claimants`` rows (ids ``1..n_people``) as Arrow batches of ``batch_rows`` rows.

    The concatenated output depends only on ``(n_people, seed)``, never on ``batch_rows``.
    """
    _check_args(n_people, seed, batch_rows)
    blocks = (_People(seed, b, n_people).claimants(seed) for b in range(_n_blocks(n_people)))
    return rebatch(blocks, batch_rows)


def payment_batches(
    n_people: int, seed: int = DEFAULT_SEED, batch_rows: int = 50_000
) -> Iterator[pa.RecordBatch]:
    """Stream the ``payments`` rows for the same people as :func:`claimant_batches`.

    Payments are ordered by claimant then date, with ids ``1..total``. ``batch_rows`` counts
    payment rows; the concatenated output depends only on ``(n_people, seed)``.
    """
    _check_args(n_people, seed, batch_rows)

    def blocks() -> Iterator[pa.RecordBatch]:
        next_id = 1
        for b in range(_n_blocks(n_people)):
            batch = _People(seed, b, n_people).payments(seed, b, next_id)
            next_id += batch.num_rows
            yield batch

    return rebatch(blocks(), batch_rows)


# ---------------------------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------------------------
def demo_metadata(schema: str | None = None) -> sa.MetaData:
    """Table definitions of the demo source (``claimants``, ``payments``), optionally in ``schema``."""
    md = sa.MetaData(schema=schema)
    sa.Table(
        "claimants",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("nino", sa.String(9), nullable=False),
        sa.Column("first_name", sa.String(40), nullable=False),
        sa.Column("last_name", sa.String(40), nullable=False),
        sa.Column("date_of_birth", sa.Date, nullable=False),
        sa.Column("sex", sa.CHAR(1), nullable=False),
        sa.Column("postcode", sa.String(8), nullable=False),
        sa.Column("region", sa.String(40), nullable=False),
        sa.Column("benefit_code", sa.String(8), nullable=False),
        sa.Column("weekly_amount", sa.Numeric(8, 2), nullable=False),
        sa.Column("claim_start", sa.Date, nullable=False),
        sa.Column("claim_end", sa.Date, nullable=True),
        sa.UniqueConstraint("nino", name="uq_claimants_nino"),
    )
    sa.Table(
        "payments",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column(
            "claimant_id",
            sa.Integer,
            sa.ForeignKey("claimants.id", name="fk_payments_claimant_id"),
            nullable=False,
        ),
        sa.Column("paid_on", sa.Date, nullable=False),
        sa.Column("amount", sa.Numeric(8, 2), nullable=False),
        sa.Index("ix_payments_claimant_id", "claimant_id"),
    )
    return md


def _load_core(
    engine: sa.Engine, table: sa.Table, batches: Iterable[pa.RecordBatch], report: Callable[[int], None]
) -> int:
    """Core ``insert()`` + executemany, one transaction per batch."""
    rows = 0
    stmt = table.insert()
    with engine.connect() as conn:
        for batch in batches:
            with conn.begin():
                conn.execute(stmt, batch.to_pylist())
            rows += batch.num_rows
            report(rows)
    return rows


def _load_sqlite(
    engine: sa.Engine, table: sa.Table, batches: Iterable[pa.RecordBatch], report: Callable[[int], None]
) -> int:
    """Core ``insert()`` executed as a plain DBAPI executemany with SQLite-native values.

    Dates are passed as ISO strings and money as floats -- exactly what SQLAlchemy's SQLite
    ``Date``/``Numeric`` bind processors would produce -- but converted column-wise by Arrow
    instead of value by value in Python, which is several times faster.
    """
    rows = 0
    compiled = table.insert().compile(dialect=engine.dialect)
    names = [c.name for c in table.columns]
    if list(compiled.positiontup or ()) != names:  # qmark paramstyle: parameters follow column order
        raise RuntimeError("unexpected SQLite insert parameter order")
    sql = str(compiled)
    with engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        in_memory = str(mode).lower() == "memory"
        if not in_memory:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.exec_driver_sql("PRAGMA synchronous=OFF")
        conn.commit()
        try:
            for batch in batches:
                columns = []
                for field, column in zip(batch.schema, batch.columns, strict=True):
                    if pa.types.is_date32(field.type):
                        column = column.cast(pa.string())
                    elif pa.types.is_decimal(field.type):
                        column = _decimal_to_float(column, field.type.scale)
                    columns.append(column.to_pylist())
                with conn.begin():
                    conn.exec_driver_sql(sql, list(zip(*columns, strict=True)))
                rows += batch.num_rows
                report(rows)
        finally:
            conn.rollback()
            conn.exec_driver_sql("PRAGMA synchronous=FULL")
            if not in_memory:
                conn.exec_driver_sql(f"PRAGMA journal_mode={mode}")
            conn.commit()
    return rows


def _decimal_to_float(column: pa.Array, scale: int) -> pa.Array:
    """Correctly rounded float of each decimal (same as ``float(Decimal)``; Arrow's cast is not)."""
    words = np.frombuffer(column.buffers()[1], dtype="<i8").reshape(-1, 2)
    unscaled = words[column.offset : column.offset + len(column), 0]  # precision 8 fits in int64
    return pa.array(unscaled / 10**scale, pa.float64())


def _load_postgresql(
    engine: sa.Engine, table: sa.Table, batches: Iterable[pa.RecordBatch], report: Callable[[int], None]
) -> int:
    """psycopg ``COPY ... FROM STDIN (FORMAT csv)``, one transaction per batch."""
    prep = engine.dialect.identifier_preparer
    cols = ", ".join(prep.quote(c.name) for c in table.columns)
    copy_sql = f"COPY {prep.format_table(table)} ({cols}) FROM STDIN WITH (FORMAT csv)"
    options = pacsv.WriteOptions(include_header=False)
    rows = 0
    raw = engine.raw_connection()
    try:
        pg = raw.driver_connection
        assert pg is not None  # an open pooled connection always holds its driver's connection
        for batch in batches:
            buf = io.BytesIO()
            pacsv.write_csv(batch, buf, write_options=options)
            try:
                with pg.cursor() as cur, cur.copy(copy_sql) as copy:
                    copy.write(buf.getbuffer())
                pg.commit()
            except BaseException:
                pg.rollback()
                raise
            rows += batch.num_rows
            report(rows)
    finally:
        raw.close()
    return rows


def write_demo_source(
    url: str,
    n_people: int = DEFAULT_PEOPLE,
    seed: int = DEFAULT_SEED,
    *,
    schema: str | None = None,
    replace: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Create the demo tables at ``url`` and fill them with synthetic data.

    Refuses with :class:`ValueError` if either table already exists, unless ``replace`` is true,
    in which case both are dropped and recreated. On PostgreSQL a missing ``schema`` is created.
    ``progress(table, rows_so_far)`` is called after each committed batch. Returns rows per table.
    """
    _check_args(n_people, seed, 1)
    engine = sa.create_engine(url)
    try:
        md = demo_metadata(schema)
        tables = {t.name: t for t in md.sorted_tables}  # claimants before payments
        inspector = sa.inspect(engine)
        existing = [name for name in tables if inspector.has_table(name, schema=schema)]
        if existing and not replace:
            where = engine.url.render_as_string(hide_password=True)
            if schema:
                where += f" (schema {schema!r})"
            raise ValueError(
                f"demo source table(s) {', '.join(existing)} already exist in {where}; "
                "pass replace=True to drop and recreate them"
            )
        dialect = engine.dialect.name
        if dialect == "postgresql" and schema is not None:
            with engine.begin() as conn:
                conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
        if existing:
            md.drop_all(engine, checkfirst=True)
        md.create_all(engine)

        loader = {"sqlite": _load_sqlite, "postgresql": _load_postgresql}.get(dialect, _load_core)
        generators = {"claimants": claimant_batches, "payments": payment_batches}
        counts: dict[str, int] = {}
        for name, table in tables.items():

            def report(rows: int, name: str = name) -> None:
                if progress is not None:
                    progress(name, rows)

            counts[name] = loader(engine, table, generators[name](n_people, seed), report)
        return counts
    finally:
        engine.dispose()
