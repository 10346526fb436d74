"""Generate svdlora's built-in grade-school math dataset.

The seed experiment fine-tunes a small model on short arithmetic word problems
and asks whether the resulting weight change is low rank. This script writes
the project's own data for it, so nothing has to be downloaded and no
third-party text (GSM8K or otherwise) is redistributed:

    data/training_data/train_flattened.json   81 rows
    data/training_data/eval.json              240 rows

Each file is a JSON list of `{"question": ..., "answer": ...}` objects. Every
question comes from one of several templated problem types (shopping with
change, unit prices, speed and distance, overtime pay, fractions, percentages,
ages, sharing with remainders, savings, recipes, fencing, unit conversion,
reselling, inventory, reading plans, ...), each with several phrasings, names
and items, and numbers drawn from `random.Random(seed)` so that every
intermediate result is an integer. The answer is a worked solution, one step
per line; each arithmetic step is written as `<expr> = <int>` using only
integers, `+ - * /` and parentheses, and the last line is `#### <answer>`.

The train and eval sets share the problem types (eval is in-distribution) but
come from different draws of one random stream, and no question text appears
twice anywhere. The same seed always gives byte-identical files; the committed
files are checked against this script by tests/test_dataset.py.

Usage: python data/make_math_dataset.py [--out-dir DIR] [--seed 2024]
       [--train-size 81] [--eval-size 240]
"""

from __future__ import annotations

import argparse
import ast
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT_DIR = HERE / "training_data"
TRAIN_FILE = "train_flattened.json"
EVAL_FILE = "eval.json"
DEFAULT_SEED = 2024
DEFAULT_TRAIN_SIZE = 81
DEFAULT_EVAL_SIZE = 240
MAX_TRIES = 1000

Row = dict[str, str]


# ---------------------------------------------------------------------------
# Exact evaluation of the written expressions


def _exact(node: ast.AST) -> Fraction:
    """Evaluate an integer +-*/ expression exactly; every sub-result must be an integer."""
    if isinstance(node, ast.Expression):
        return _exact(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_exact(node.operand)
    if isinstance(node, ast.BinOp):
        left, right = _exact(node.left), _exact(node.right)
        if isinstance(node.op, ast.Add):
            value = left + right
        elif isinstance(node.op, ast.Sub):
            value = left - right
        elif isinstance(node.op, ast.Mult):
            value = left * right
        elif isinstance(node.op, ast.Div):
            value = left / right
        else:
            raise ValueError(f"operator {type(node.op).__name__} is not allowed")
        if value.denominator != 1:
            raise ValueError(f"non-integer intermediate result {value}")
        return value
    raise ValueError(f"{type(node).__name__} is not allowed in an expression")


def evaluate(expr: str) -> int:
    """The integer value of `expr`, or ValueError if it is not exact integer arithmetic."""
    return int(_exact(ast.parse(expr, mode="eval")))


# ---------------------------------------------------------------------------
# Building blocks


@dataclass(frozen=True)
class Person:
    """A name with the pronouns the templates need."""

    name: str
    he: str
    him: str
    his: str

    @property
    def He(self) -> str:
        return self.he.capitalize()

    @property
    def His(self) -> str:
        return self.his.capitalize()


_SHE = ("she", "her", "her")
_HE = ("he", "him", "his")
PEOPLE = [
    Person(name, *pronouns)
    for name, pronouns in [
        ("Amara", _SHE),
        ("Bilal", _HE),
        ("Chen", _HE),
        ("Dalia", _SHE),
        ("Emeka", _HE),
        ("Farah", _SHE),
        ("Gustavo", _HE),
        ("Hana", _SHE),
        ("Ivan", _HE),
        ("Jun", _HE),
        ("Keira", _SHE),
        ("Luis", _HE),
        ("Mei", _SHE),
        ("Nadia", _SHE),
        ("Oren", _HE),
        ("Priya", _SHE),
        ("Quentin", _HE),
        ("Rosa", _SHE),
        ("Sami", _HE),
        ("Tariq", _HE),
        ("Uma", _SHE),
        ("Viktor", _HE),
        ("Wren", _SHE),
        ("Ximena", _SHE),
        ("Yusuf", _HE),
        ("Zoe", _SHE),
        ("Aiko", _SHE),
        ("Bruno", _HE),
        ("Leila", _SHE),
        ("Mateo", _HE),
    ]
]


class Solution:
    """Collects the lines of a worked answer; each arithmetic step is checked as it is written."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.last: int | None = None

    def calc(self, text: str, expr: str, tail: str = ".") -> int:
        """Append `<text> <expr> = <value><tail>` and return the value."""
        stripped = text.rstrip()
        if " = " in text or not stripped or stripped[-1].isdigit() or stripped[-1] in "+-*/()":
            raise ValueError(f"step text {text!r} would blur into its expression")
        value = evaluate(expr)
        self.lines.append(f"{stripped} {expr} = {value}{tail}")
        self.last = value
        return value

    def say(self, text: str) -> None:
        """Append a sentence with no arithmetic."""
        if " = " in text:
            raise ValueError(f"plain sentence {text!r} contains ' = '")
        self.lines.append(text)

    def finish(self, answer: int) -> str:
        steps = sum(" = " in line for line in self.lines)
        if not 2 <= steps <= 5:
            raise ValueError(f"{steps} arithmetic steps; want 2 to 5")
        if answer != self.last:
            raise ValueError(f"answer {answer} is not the last step's result {self.last}")
        return "\n".join([*self.lines, f"#### {answer}"])


Problem = tuple[str, str]


def _person(rng: random.Random) -> Person:
    return rng.choice(PEOPLE)


def _two_people(rng: random.Random) -> tuple[Person, Person]:
    first, second = rng.sample(PEOPLE, 2)
    return first, second


# ---------------------------------------------------------------------------
# Problem types: each takes the shared RNG and returns (question, answer)


def gen_shopping_change(rng: random.Random) -> Problem:
    p = _person(rng)
    goods = [
        ("notebook", "notebooks"),
        ("pen", "pens"),
        ("apple", "apples"),
        ("sandwich", "sandwiches"),
        ("comic book", "comic books"),
        ("juice box", "juice boxes"),
        ("bag of chips", "bags of chips"),
        ("candle", "candles"),
        ("pack of stickers", "packs of stickers"),
        ("muffin", "muffins"),
    ]
    (_, first), (_, second) = rng.sample(goods, 2)
    a, b = rng.randint(2, 6), rng.randint(2, 5)
    pa, pb = rng.randint(2, 9), rng.randint(2, 9)
    total = a * pa + b * pb
    bill = next(x for x in (20, 50, 100) if x > total)
    question = rng.choice(
        [
            f"{p.name} buys {a} {first} for ${pa} each and {b} {second} for ${pb} each. "
            f"{p.He} pays with a ${bill} bill. How much change does {p.he} get back?",
            f"At the market, {p.name} picks up {a} {first} that cost ${pa} apiece and {b} "
            f"{second} that cost ${pb} apiece. If {p.he} hands the cashier ${bill}, how many "
            f"dollars of change should {p.he} receive?",
            f"{p.name} has a ${bill} bill and spends part of it on {a} {first} at ${pa} each "
            f"and {b} {second} at ${pb} each. How much money does {p.he} have left?",
        ]
    )
    s = Solution()
    c1 = s.calc(f"The {first} cost", f"{a} * {pa}", " dollars.")
    c2 = s.calc(f"The {second} cost", f"{b} * {pb}", " dollars.")
    spent = s.calc(f"Altogether {p.he} spends", f"{c1} + {c2}", " dollars.")
    change = s.calc(
        rng.choice(["The change is", f"So {p.he} gets back"]), f"{bill} - {spent}", " dollars."
    )
    return question, s.finish(change)


def gen_unit_price(rng: random.Random) -> Problem:
    p = _person(rng)
    item = rng.choice(["pencils", "erasers", "batteries", "tennis balls", "light bulbs", "rolls"])
    n = rng.randint(3, 12)
    unit = rng.randint(1, 6)
    pack = n * unit
    m = rng.randint(n + 1, 4 * n)
    coupon = rng.randint(1, 5)
    question = rng.choice(
        [
            f"A pack of {n} {item} costs ${pack}, and the store also sells them one at a time "
            f"for the same price per item. {p.name} needs {m} {item} and has a ${coupon} "
            f"coupon for the whole order. How much does {p.he} pay?",
            f"{n} {item} cost ${pack} together. {p.name} buys {m} {item} at that same price "
            f"per item and uses a coupon worth ${coupon}. How many dollars does {p.he} spend?",
            f"The price of {item} is ${pack} for {n}. If {p.name} wants {m} of them, priced "
            f"individually at the same rate, and takes ${coupon} off with a coupon, what is "
            f"{p.his} total?",
        ]
    )
    s = Solution()
    each = s.calc("Each one costs", f"{pack} / {n}", " dollars.")
    cost = s.calc(f"For {m} {item} the price is", f"{m} * {each}", " dollars.")
    pay = s.calc("After the coupon the total is", f"{cost} - {coupon}", " dollars.")
    return question, s.finish(pay)


def gen_bulk_discount(rng: random.Random) -> Problem:
    p = _person(rng)
    single, plural = rng.choice(
        [
            ("T-shirt", "T-shirts"),
            ("plant pot", "plant pots"),
            ("bag of rice", "bags of rice"),
            ("box of tea", "boxes of tea"),
            ("poster", "posters"),
            ("mug", "mugs"),
        ]
    )
    price = rng.randint(6, 25)
    off = rng.randint(1, min(5, price - 2))
    threshold = rng.randint(3, 6)
    k = rng.randint(threshold, threshold + 8)
    ask = rng.choice(["pay", "save", "friend"])
    rule = rng.choice(
        [
            f"A shop sells each {single} for ${price}. If you buy at least {threshold}, every "
            f"{single} costs ${off} less.",
            f"The regular price of a {single} is ${price}, but orders of {threshold} or more get "
            f"${off} off each one.",
        ]
    )
    s = Solution()
    if ask == "friend":
        mine = rng.randint(1, k - 1)
        friend = k - mine
        question = (
            f"{rule} {p.name} wants {mine} {plural} and {p.his} friend wants {friend}, so they "
            f"order together. How much does the combined order cost?"
        )
        count = s.calc("Together they order", f"{mine} + {friend}", f" {plural}.")
        s.say(f"That is at least {threshold}, so the discount applies.")
        each = s.calc(f"Each {single} costs", f"{price} - {off}", " dollars.")
        total = s.calc("The order costs", f"{count} * {each}", " dollars.")
        return question, s.finish(total)
    if ask == "pay":
        question = f"{rule} {p.name} buys {k} {plural}. How much does {p.he} pay?"
        s.say(f"{k} is at least {threshold}, so the discount applies.")
        each = s.calc(f"Each {single} costs", f"{price} - {off}", " dollars.")
        total = s.calc(f"For {k} {plural} {p.he} pays", f"{k} * {each}", " dollars.")
        return question, s.finish(total)
    question = (
        f"{rule} {p.name} buys {k} {plural}. How much money does {p.he} save compared with "
        f"paying the regular price?"
    )
    regular = s.calc("At the regular price they would cost", f"{k} * {price}", " dollars.")
    each = s.calc(f"With the discount each {single} costs", f"{price} - {off}", " dollars.")
    paid = s.calc(f"So {p.he} pays", f"{k} * {each}", " dollars.")
    saved = s.calc(f"{p.He} saves", f"{regular} - {paid}", " dollars.")
    return question, s.finish(saved)


def gen_speed_distance_time(rng: random.Random) -> Problem:
    p = _person(rng)
    unit = rng.choice(["kilometers", "miles"])
    form = rng.choice(["two_legs", "same_speed", "time_left"])
    s = Solution()
    if form == "two_legs":
        s1, s2 = rng.randint(30, 70), rng.randint(30, 70)
        t1, t2 = rng.randint(2, 5), rng.randint(1, 4)
        vehicle = rng.choice(["drives", "rides a motorbike", "travels by bus"])
        question = rng.choice(
            [
                f"{p.name} {vehicle} at {s1} {unit} per hour for {t1} hours, then at {s2} {unit} "
                f"per hour for {t2} more hours. How many {unit} does {p.he} travel in total?",
                f"On a road trip {p.name} {vehicle} for {t1} hours at an average of {s1} {unit} "
                f"an hour and afterwards for {t2} hours at {s2} {unit} an hour. What is the "
                f"total distance in {unit}?",
            ]
        )
        d1 = s.calc("The first part covers", f"{s1} * {t1}", f" {unit}.")
        d2 = s.calc("The second part covers", f"{s2} * {t2}", f" {unit}.")
        total = s.calc("The whole trip is", f"{d1} + {d2}", f" {unit}.")
        return question, s.finish(total)
    if form == "same_speed":
        speed = rng.randint(20, 90)
        t = rng.randint(2, 6)
        t2 = rng.choice([x for x in range(2, 10) if x != t])
        dist = speed * t
        mover = rng.choice(["A train", "A truck", "A ferry", "A delivery van"])
        question = rng.choice(
            [
                f"{mover} covers {dist} {unit} in {t} hours. Moving at the same speed, how far "
                f"does it go in {t2} hours?",
                f"In {t} hours, {mover.lower()} travels {dist} {unit} at a steady speed. How "
                f"many {unit} will it travel in {t2} hours?",
            ]
        )
        speed_v = s.calc("Its speed is", f"{dist} / {t}", f" {unit} per hour.")
        far = s.calc(f"In {t2} hours it goes", f"{speed_v} * {t2}", f" {unit}.")
        return question, s.finish(far)
    speed = rng.randint(8, 25)
    done_h = rng.randint(1, 4)
    rest_h = rng.randint(1, 5)
    total = speed * (done_h + rest_h)
    question = rng.choice(
        [
            f"{p.name} is cycling a {total}-{unit[:-1]} route at {speed} {unit} per hour. "
            f"{p.He} has already ridden for {done_h} hours. How many more hours will {p.he} need "
            f"at the same speed?",
            f"A {total} {unit} charity ride: {p.name} keeps a pace of {speed} {unit} an hour and "
            f"has been riding for {done_h} hours. How many hours are left if {p.he} keeps the "
            f"same pace?",
        ]
    )
    done = s.calc("So far the distance ridden is", f"{speed} * {done_h}", f" {unit}.")
    left = s.calc("The distance left is", f"{total} - {done}", f" {unit}.")
    hours = s.calc("The time needed is", f"{left} / {speed}", " hours.")
    return question, s.finish(hours)


def gen_wages_overtime(rng: random.Random) -> Problem:
    p = _person(rng)
    rate = 2 * rng.randint(6, 15)
    base = rng.choice([35, 38, 40])
    hours = base + rng.randint(2, 12)
    double = rng.random() < 0.4
    bonus_name = "double pay" if double else "time and a half"
    job = rng.choice(["at a bakery", "at a warehouse", "as a lifeguard", "in a repair shop"])
    question = rng.choice(
        [
            f"{p.name} works {job} and earns ${rate} an hour for the first {base} hours of a "
            f"week, and {bonus_name} for every hour beyond that. Last week {p.he} worked "
            f"{hours} hours. How much did {p.he} earn?",
            f"{p.name}'s job {job} pays ${rate} per hour up to {base} hours a week; overtime "
            f"hours are paid at {bonus_name}. How many dollars does {p.he} make in a week of "
            f"{hours} hours?",
            f"For a {hours}-hour week {job}, {p.name} gets ${rate} per hour for {base} regular "
            f"hours and {bonus_name} for the rest. What is {p.his} pay for the week?",
        ]
    )
    s = Solution()
    regular = s.calc("Regular pay is", f"{base} * {rate}", " dollars.")
    extra = s.calc("Overtime hours are", f"{hours} - {base}", ".")
    if double:
        ot_rate = s.calc("The overtime rate is", f"{rate} * 2", " dollars per hour.")
    else:
        ot_rate = s.calc("The overtime rate is", f"{rate} * 3 / 2", " dollars per hour.")
    ot_pay = s.calc("Overtime pay is", f"{extra} * {ot_rate}", " dollars.")
    total = s.calc("The week's pay is", f"{regular} + {ot_pay}", " dollars.")
    return question, s.finish(total)


_PART_WORD = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}


def gen_fraction_of_collection(rng: random.Random) -> Problem:
    p = _person(rng)
    things, colors = rng.choice(
        [
            ("marbles", ("red", "blue", "green")),
            ("beads", ("white", "gold", "black")),
            ("stickers", ("animal", "star", "flower")),
            ("crayons", ("yellow", "purple", "orange")),
            ("tulips", ("pink", "white", "yellow")),
        ]
    )
    a = rng.randint(2, 5)
    c = rng.randint(2, 5)
    b = rng.randint(1, c - 1)
    total = a * c * rng.randint(2, 8)
    first, second, third = colors
    question = rng.choice(
        [
            f"{p.name} has {total} {things}. {_PART_WORD[a].capitalize()} of them are {first}, "
            f"and {b}/{c} of the rest are {second}. The others are {third}. How many {third} "
            f"{things} does {p.he} have?",
            f"In a jar of {total} {things}, {_PART_WORD[a]} are {first}. Of the remaining "
            f"{things}, {b}/{c} are {second} and the rest are {third}. How many are {third}?",
            f"{p.name} sorts {total} {things}: {_PART_WORD[a]} are {first}, then {b} out of "
            f"every {c} of what is left are {second}, and everything else is {third}. How many "
            f"{third} {things} are there?",
        ]
    )
    s = Solution()
    n1 = s.calc(f"The {first} ones number", f"{total} / {a}", ".")
    rest = s.calc("That leaves", f"{total} - {n1}", f" {things}.")
    n2 = s.calc(f"The {second} ones number", f"{rest} * {b} / {c}", ".")
    n3 = s.calc(f"The {third} ones number", f"{rest} - {n2}", ".")
    return question, s.finish(n3)


def gen_percent_discount_tax(rng: random.Random) -> Problem:
    p = _person(rng)
    item = rng.choice(["jacket", "bicycle helmet", "lamp", "backpack", "pair of boots", "tent"])
    for _ in range(MAX_TRIES):
        price = 10 * rng.randint(2, 30)
        off = rng.choice([10, 20, 25, 30, 40, 50])
        tax = rng.choice([5, 10])
        if price * off % 100 == 0 and price * (100 - off) * tax % 10000 == 0:
            break
    else:  # pragma: no cover - the ranges always contain a valid draw
        raise RuntimeError("no exact discount/tax draw")
    question = rng.choice(
        [
            f"A {item} costs ${price}. It is on sale for {off}% off, and then a {tax}% sales "
            f"tax is added to the sale price. How much does {p.name} pay for it?",
            f"{p.name} wants a ${price} {item}. The store takes {off}% off the price, and "
            f"{tax}% tax is charged on the reduced price. What is the final cost in dollars?",
            f"The tag on a {item} says ${price}. With a {off}% discount and {tax}% tax on the "
            f"discounted amount, how much will {p.name} spend?",
        ]
    )
    s = Solution()
    discount = s.calc("The discount is", f"{price} * {off} / 100", " dollars.")
    sale = s.calc("The sale price is", f"{price} - {discount}", " dollars.")
    tax_v = s.calc("The tax is", f"{sale} * {tax} / 100", " dollars.")
    total = s.calc(f"{p.name} pays", f"{sale} + {tax_v}", " dollars.")
    return question, s.finish(total)


def gen_ages(rng: random.Random) -> Problem:
    a, b = _two_people(rng)
    s = Solution()
    if rng.random() < 0.5:
        c = rng.choice([x for x in PEOPLE if x not in (a, b)])
        young = rng.randint(3, 12)
        k = rng.randint(2, 4)
        gap = rng.randint(1, k * young - 2)
        years = rng.randint(2, 10)
        question = rng.choice(
            [
                f"{b.name} is {young} years old. {a.name} is {k} times as old as {b.name}, and "
                f"{c.name} is {gap} years younger than {a.name}. What will the sum of their "
                f"three ages be in {years} years?",
                f"{a.name}'s age is {k} times {b.name}'s, and {b.name} is {young}. {c.name} is "
                f"{gap} years younger than {a.name}. In {years} years, what will their ages add "
                f"up to?",
            ]
        )
        age_a = s.calc(f"{a.name} is", f"{k} * {young}", " years old.")
        age_c = s.calc(f"{c.name} is", f"{age_a} - {gap}", " years old.")
        now = s.calc("Their ages now add up to", f"{young} + {age_a} + {age_c}", ".")
        later = s.calc(
            f"Each of the three gets {years} years older, so the sum becomes",
            f"{now} + 3 * {years}",
            ".",
        )
        return question, s.finish(later)
    z = rng.randint(3, 20)
    years = rng.randint(2, 10)
    k = rng.randint(2, 3)
    times = {2: "twice", 3: "three times"}[k]
    question = rng.choice(
        [
            f"In {years} years, {a.name} will be {times} as old as {b.name} will be then. "
            f"{b.name} is {z} now. How old is {a.name} now?",
            f"{b.name} is {z} years old. {years} years from now, {a.name}'s age will be {times} "
            f"{b.name}'s age at that time. How old is {a.name} today?",
        ]
    )
    zf = s.calc(f"In {years} years {b.name} will be", f"{z} + {years}", ".")
    af = s.calc(f"Then {a.name} will be", f"{k} * {zf}", ".")
    now_a = s.calc(f"So today {a.name} is", f"{af} - {years}", " years old.")
    return question, s.finish(now_a)


def gen_sharing_remainder(rng: random.Random) -> Problem:
    p = _person(rng)
    things = rng.choice(["cookies", "stickers", "grapes", "trading cards", "crackers", "coins"])
    k = rng.randint(3, 9)
    q = rng.randint(3, 12)
    r = rng.randint(1, k - 1)
    n = k * q + r
    form = rng.choice(["leftover", "keeper", "bags"])
    s = Solution()
    if form == "bags":
        price = rng.randint(2, 6)
        question = rng.choice(
            [
                f"{p.name} has {n} {things} and packs them into bags of {k}, filling as many "
                f"bags as possible. {p.He} sells each full bag for ${price}. How much money does "
                f"{p.he} make?",
                f"{p.name} puts {n} {things} into bags that hold exactly {k} each and sells "
                f"only full bags, at ${price} a bag. How many dollars does {p.he} earn?",
            ]
        )
        used = s.calc(
            f"The largest multiple of {k} that is not more than {n} is",
            f"{k} * {q}",
            f", so {q} bags are full.",
        )
        s.calc("Left over are", f"{n} - {used}", f" {things}.")
        money = s.calc(f"{p.He} earns", f"{q} * {price}", " dollars.")
        return question, s.finish(money)
    question_share = (
        f"{p.name} shares {n} {things} equally among {k} friends, giving each friend as many "
        f"as possible."
    )
    used_text = f"Each friend gets {q}, because the most that fits is"
    if form == "leftover":
        question = rng.choice(
            [
                f"{question_share} How many {things} are left over?",
                f"{n} {things} are split evenly between {k} children, with any extras put "
                f"aside. How many are put aside?",
            ]
        )
        used = s.calc(used_text, f"{k} * {q}", f" {things}.")
        left = s.calc("The leftover is", f"{n} - {used}", f" {things}.")
        return question, s.finish(left)
    question = rng.choice(
        [
            f"{p.name} and {k - 1} friends split {n} {things} equally, and {p.name} takes any "
            f"that are left over as well. How many {things} does {p.name} end up with?",
            f"{n} {things} are shared equally among {k} people, one of them {p.name}. Whatever "
            f"cannot be shared equally also goes to {p.name}. How many does {p.he} get?",
        ]
    )
    used = s.calc(f"Each person gets {q}, because", f"{k} * {q}", " is the most that fits.")
    left = s.calc("The leftover is", f"{n} - {used}", f" {things}.")
    total = s.calc(f"{p.name} gets", f"{q} + {left}", f" {things}.")
    return question, s.finish(total)


def gen_savings_weeks(rng: random.Random) -> Problem:
    p = _person(rng)
    goal = rng.choice(["a bike", "a guitar", "a video game", "a telescope", "a skateboard"])
    form = rng.choice(["weeks", "allowance", "left"])
    s = Solution()
    if form == "weeks":
        w = rng.randint(4, 20)
        weeks = rng.randint(3, 12)
        have = rng.randint(5, 60)
        cost = have + w * weeks
        question = rng.choice(
            [
                f"{p.name} wants to buy {goal} that costs ${cost}. {p.He} already has ${have} "
                f"and saves ${w} each week. How many weeks will it take to afford it?",
                f"{goal.capitalize()} costs ${cost}. {p.name} has saved ${have} so far and puts "
                f"away ${w} a week. After how many weeks will {p.he} have exactly enough?",
            ]
        )
        need = s.calc(f"{p.He} still needs", f"{cost} - {have}", " dollars.")
        n = s.calc("That takes", f"{need} / {w}", " weeks.")
        return question, s.finish(n)
    if form == "allowance":
        spend = rng.randint(2, 10)
        w = rng.randint(3, 15)
        allowance = spend + w
        weeks = rng.randint(3, 10)
        have = rng.randint(0, 40)
        cost = have + w * weeks
        question = (
            f"{p.name} gets ${allowance} of pocket money every week, spends ${spend} of it and "
            f"saves the rest. {p.He} has ${have} now and wants {goal} costing ${cost}. How many "
            f"weeks must {p.he} save?"
        )
        saved = s.calc(f"Each week {p.he} saves", f"{allowance} - {spend}", " dollars.")
        need = s.calc(f"{p.He} still needs", f"{cost} - {have}", " dollars.")
        n = s.calc("That takes", f"{need} / {saved}", " weeks.")
        return question, s.finish(n)
    w = rng.randint(5, 25)
    weeks = rng.randint(3, 12)
    have = rng.randint(10, 80)
    spent = rng.randint(5, have + w * weeks - 1)
    question = rng.choice(
        [
            f"{p.name} starts with ${have} in a piggy bank and adds ${w} every week for {weeks} "
            f"weeks. Then {p.he} spends ${spent} on a present. How much is left in the bank?",
            f"Over {weeks} weeks {p.name} saves ${w} a week on top of the ${have} {p.he} "
            f"already had. After buying a gift for ${spent}, how many dollars remain?",
        ]
    )
    added = s.calc(f"{p.He} adds", f"{w} * {weeks}", " dollars.")
    total = s.calc(f"{p.He} then has", f"{have} + {added}", " dollars.")
    left = s.calc("After the purchase there is", f"{total} - {spent}", " dollars left.")
    return question, s.finish(left)


def gen_recipe_scaling(rng: random.Random) -> Problem:
    p = _person(rng)
    dish = rng.choice(["pancakes", "muffins", "bread rolls", "cookies", "scones"])
    serves = rng.choice([2, 3, 4, 6])
    factor = rng.randint(2, 6)
    target = serves * factor
    flour = rng.randint(1, 4)
    sugar = rng.randint(1, 3)
    s = Solution()
    if rng.random() < 0.5:
        question = rng.choice(
            [
                f"A recipe for {serves} batches of {dish} uses {flour} cups of flour and {sugar} "
                f"cups of sugar. {p.name} wants to make {target} batches. How many cups of flour "
                f"and sugar together does {p.he} need?",
                f"To make {serves} trays of {dish}, {p.name} needs {flour} cups of flour and "
                f"{sugar} cups of sugar. How many cups of these two ingredients in total are "
                f"needed for {target} trays?",
            ]
        )
        f = s.calc("The recipe must be multiplied by", f"{target} / {serves}", ".")
        fl = s.calc("Flour needed:", f"{flour} * {f}", " cups.")
        su = s.calc("Sugar needed:", f"{sugar} * {f}", " cups.")
        total = s.calc("Together that is", f"{fl} + {su}", " cups.")
        return question, s.finish(total)
    eggs = rng.randint(1, 4)
    have = rng.randint(0, eggs * factor - 1)
    question = rng.choice(
        [
            f"A recipe for {serves} servings of {dish} needs {eggs} eggs. {p.name} is cooking "
            f"{target} servings and has {have} eggs at home. How many more eggs must {p.he} buy?",
            f"{p.name}'s {dish} recipe makes {serves} servings with {eggs} eggs. For {target} "
            f"servings, how many eggs does {p.he} still need to buy if {p.he} has {have}?",
        ]
    )
    f = s.calc("The recipe must be multiplied by", f"{target} / {serves}", ".")
    need = s.calc("Eggs needed:", f"{eggs} * {f}", ".")
    buy = s.calc(f"{p.He} must buy", f"{need} - {have}", " eggs.")
    return question, s.finish(buy)


def gen_rectangle_fence(rng: random.Random) -> Problem:
    p = _person(rng)
    length = rng.randint(6, 30)
    width = rng.randint(3, length - 1)
    place = rng.choice(["garden", "yard", "paddock", "playground", "vegetable patch"])
    form = rng.choice(["fence", "tiles", "patch"])
    s = Solution()
    if form == "fence":
        gate = rng.randint(1, 3)
        price = rng.randint(3, 15)
        question = rng.choice(
            [
                f"{p.name}'s rectangular {place} is {length} meters long and {width} meters "
                f"wide. {p.He} fences all around it except for a {gate}-meter gate. Fencing "
                f"costs ${price} per meter. How much does the fencing cost?",
                f"A rectangular {place} measures {length} m by {width} m. Fence is needed along "
                f"the whole edge apart from a gap of {gate} m for a gate. At ${price} a meter, "
                f"what does the fence cost?",
            ]
        )
        perim = s.calc("The perimeter is", f"2 * ({length} + {width})", " meters.")
        fence = s.calc("Without the gate, the fence is", f"{perim} - {gate}", " meters.")
        cost = s.calc("The cost is", f"{fence} * {price}", " dollars.")
        return question, s.finish(cost)
    if form == "tiles":
        price = rng.randint(2, 12)
        question = rng.choice(
            [
                f"A rectangular {place} is {length} meters by {width} meters. Covering it costs "
                f"${price} per square meter. What is the total cost?",
                f"{p.name} wants to cover a {length} m by {width} m rectangular {place} with turf "
                f"that costs ${price} per square meter. How much will it cost?",
            ]
        )
        area = s.calc("The area is", f"{length} * {width}", " square meters.")
        cost = s.calc("The cost is", f"{area} * {price}", " dollars.")
        return question, s.finish(cost)
    side = rng.randint(2, width)
    question = rng.choice(
        [
            f"A rectangular {place} is {length} meters long and {width} meters wide. A square "
            f"shed with sides of {side} meters stands in it. How many square meters of the "
            f"{place} are not covered by the shed?",
            f"{p.name} plants grass on a {length} m by {width} m {place}, except for a square "
            f"pond {side} m on each side. How many square meters get grass?",
        ]
    )
    area = s.calc(f"The {place} has an area of", f"{length} * {width}", " square meters.")
    sq = s.calc("The square takes up", f"{side} * {side}", " square meters.")
    rest = s.calc("The remaining area is", f"{area} - {sq}", " square meters.")
    return question, s.finish(rest)


def gen_unit_conversion(rng: random.Random) -> Problem:
    p = _person(rng)
    form = rng.choice(["practice", "ribbon", "episodes"])
    s = Solution()
    if form == "practice":
        for _ in range(MAX_TRIES):
            minutes = 5 * rng.randint(3, 18)
            days = rng.randint(2, 12)
            if minutes * days % 60 == 0:
                break
        else:  # pragma: no cover
            raise RuntimeError("no exact minutes draw")
        activity = rng.choice(["piano", "chess", "swimming", "drawing", "the violin"])
        question = rng.choice(
            [
                f"{p.name} practices {activity} for {minutes} minutes a day for {days} days. "
                f"How many hours is that in total?",
                f"Over {days} days, {p.name} spends {minutes} minutes each day on {activity}. "
                f"How many hours does {p.he} spend altogether?",
            ]
        )
        total = s.calc("In minutes that is", f"{minutes} * {days}", " minutes.")
        hours = s.calc("In hours that is", f"{total} / 60", " hours.")
        return question, s.finish(hours)
    if form == "ribbon":
        piece = rng.choice([10, 20, 25, 50])
        meters = rng.randint(2, 9)
        pieces = meters * 100 // piece
        given = rng.randint(1, pieces - 1)
        material = rng.choice(["ribbon", "rope", "string", "fabric tape"])
        question = rng.choice(
            [
                f"{p.name} cuts {meters} meters of {material} into pieces that are each {piece} "
                f"centimeters long, then gives {given} pieces away. How many pieces does "
                f"{p.he} keep?",
                f"A roll of {material} is {meters} m long. {p.name} cuts it into {piece} cm "
                f"pieces and uses {given} of them for a project. How many pieces are left?",
            ]
        )
        cm = s.calc("In centimeters the length is", f"{meters} * 100", ".")
        n = s.calc("The number of pieces is", f"{cm} / {piece}", ".")
        left = s.calc("Pieces left:", f"{n} - {given}", ".")
        return question, s.finish(left)
    for _ in range(MAX_TRIES):
        hours = rng.randint(1, 5)
        extra = 5 * rng.randint(0, 11)
        episode = rng.choice([15, 20, 25, 30, 45])
        if (hours * 60 + extra) % episode == 0:
            break
    else:  # pragma: no cover
        raise RuntimeError("no exact episode draw")
    show = rng.choice(["a cartoon", "a cooking show", "a podcast", "a nature series"])
    question = rng.choice(
        [
            f"{p.name} has {hours} hours and {extra} minutes free. Each episode of {show} lasts "
            f"{episode} minutes. How many whole episodes can {p.he} watch, with no time left?",
            f"Episodes of {show} are {episode} minutes long. How many of them fit exactly into "
            f"{hours} hours and {extra} minutes?",
        ]
    )
    total = s.calc("The free time is", f"{hours} * 60 + {extra}", " minutes.")
    n = s.calc("The number of episodes is", f"{total} / {episode}", ".")
    return question, s.finish(n)


def gen_resell_profit(rng: random.Random) -> Problem:
    p = _person(rng)
    s = Solution()
    if rng.random() < 0.5:
        item = rng.choice(["lemonade cups", "bracelets", "plants", "used books", "kites"])
        for _ in range(MAX_TRIES):
            n = rng.randint(10, 40)
            cost = rng.randint(2, 8)
            k = rng.randint(n // 2, n - 1)
            high = cost + rng.randint(2, 6)
            low = rng.randint(1, cost)
            if k * high + (n - k) * low > n * cost:
                break
        else:  # pragma: no cover
            raise RuntimeError("no profitable draw")
        question = rng.choice(
            [
                f"{p.name} buys {n} {item} for ${cost} each. {p.He} sells {k} of them for "
                f"${high} each and the rest for ${low} each. How much profit does {p.he} make?",
                f"At a fair, {p.name} spends ${cost} apiece on {n} {item}. {k} sell at ${high} "
                f"each; the others are sold off at ${low} each. What is {p.his} profit?",
            ]
        )
        spent = s.calc(f"{p.He} spends", f"{n} * {cost}", " dollars.")
        r1 = s.calc("The first sales bring in", f"{k} * {high}", " dollars.")
        r2 = s.calc("The rest bring in", f"({n} - {k}) * {low}", " dollars.")
        profit = s.calc("The profit is", f"{r1} + {r2} - {spent}", " dollars.")
        return question, s.finish(profit)
    item = rng.choice(["oranges", "bottles of water", "eggs", "peaches", "cans of soda"])
    crates = rng.randint(2, 9)
    per = rng.choice([6, 10, 12, 15, 20, 24])
    price = rng.randint(1, 3)
    crate_cost = rng.randint(per * price // 3, per * price - 1)
    question = rng.choice(
        [
            f"A shopkeeper named {p.name} buys {crates} crates of {item} at ${crate_cost} per "
            f"crate. Each crate holds {per}, and {p.he} sells every one for ${price}. What is "
            f"the profit?",
            f"{p.name} pays ${crate_cost} for each of {crates} crates, each holding {per} "
            f"{item}, and resells them at ${price} apiece. How many dollars of profit is that?",
        ]
    )
    spent = s.calc("The crates cost", f"{crates} * {crate_cost}", " dollars.")
    count = s.calc("There are", f"{crates} * {per}", f" {item}.")
    revenue = s.calc("Selling them brings in", f"{count} * {price}", " dollars.")
    profit = s.calc("The profit is", f"{revenue} - {spent}", " dollars.")
    return question, s.finish(profit)


def gen_inventory(rng: random.Random) -> Problem:
    p = _person(rng)
    shop = rng.choice(["bookshop", "toy store", "flower stall", "bakery", "hardware store"])
    item = rng.choice(["boxes", "units", "items", "packages"])
    s = Solution()
    if rng.random() < 0.5:
        start = rng.randint(60, 300)
        a = rng.randint(5, start // 3)
        b = rng.randint(5, start // 3)
        restock = rng.randint(10, 120)
        c = rng.randint(5, start - a - b + restock - 1)
        question = rng.choice(
            [
                f"{p.name}'s {shop} starts the week with {start} {item} in stock. It sells {a} on "
                f"Monday and {b} on Tuesday, receives a delivery of {restock} on Wednesday, and "
                f"sells {c} on Thursday. How many {item} are in stock now?",
                f"A {shop} had {start} {item}. After selling {a} and then {b}, {p.name} restocked "
                f"{restock} more, and later sold another {c}. How many {item} remain?",
            ]
        )
        after = s.calc("After the first two days there are", f"{start} - {a} - {b}", f" {item}.")
        more = s.calc("The delivery brings it to", f"{after} + {restock}", f" {item}.")
        end = s.calc("After the last sales there are", f"{more} - {c}", f" {item}.")
        return question, s.finish(end)
    start = 2 * rng.randint(20, 120)
    restock = rng.randint(10, 100)
    c = rng.randint(5, start // 2 + restock - 1)
    question = rng.choice(
        [
            f"A {shop} has {start} {item}. Half of them are sold in the morning. In the "
            f"afternoon {p.name} unpacks {restock} more, and then {c} are sold before closing. "
            f"How many are left?",
            f"{p.name} runs a {shop} with {start} {item} on the shelves. {p.He} sells half, "
            f"restocks {restock}, and sells {c} more. How many {item} are on the shelves now?",
        ]
    )
    half = s.calc("After selling half there are", f"{start} / 2", f" {item}.")
    more = s.calc("After restocking there are", f"{half} + {restock}", f" {item}.")
    end = s.calc("At closing there are", f"{more} - {c}", f" {item}.")
    return question, s.finish(end)


def gen_reading_pages(rng: random.Random) -> Problem:
    p = _person(rng)
    a = rng.randint(8, 30)
    d = rng.randint(2, 7)
    b = rng.randint(10, 40)
    e = rng.randint(2, 8)
    pages = a * d + b * e
    what = rng.choice(["novel", "history book", "comic collection", "science book"])
    question = rng.choice(
        [
            f"{p.name} is reading a {pages}-page {what}. {p.He} reads {a} pages a day for "
            f"{d} days, then speeds up to {b} pages a day. How many more days does {p.he} need "
            f"to finish?",
            f"A {what} has {pages} pages. For the first {d} days {p.name} reads {a} pages each "
            f"day; after that {p.he} reads {b} pages a day. How many days after the first {d} "
            f"does {p.he} finish the book?",
            f"{p.name} reads {a} pages daily for {d} days from a {what} with {pages} pages. If "
            f"{p.he} then reads {b} pages every day, how many extra days will it take to reach "
            f"the end?",
        ]
    )
    s = Solution()
    read = s.calc(f"In the first {d} days {p.he} reads", f"{a} * {d}", " pages.")
    left = s.calc("Pages left:", f"{pages} - {read}", ".")
    days = s.calc("Days needed:", f"{left} / {b}", ".")
    return question, s.finish(days)


PROBLEM_TYPES: list[Callable[[random.Random], Problem]] = [
    gen_shopping_change,
    gen_unit_price,
    gen_bulk_discount,
    gen_speed_distance_time,
    gen_wages_overtime,
    gen_fraction_of_collection,
    gen_percent_discount_tax,
    gen_ages,
    gen_sharing_remainder,
    gen_savings_weeks,
    gen_recipe_scaling,
    gen_rectangle_fence,
    gen_unit_conversion,
    gen_resell_profit,
    gen_inventory,
    gen_reading_pages,
]


def type_name(generator: Callable[[random.Random], Problem]) -> str:
    """The problem type's name, e.g. `shopping_change`."""
    return generator.__name__.removeprefix("gen_")


# ---------------------------------------------------------------------------
# Dataset assembly


def generate_typed(
    seed: int = DEFAULT_SEED,
    train_size: int = DEFAULT_TRAIN_SIZE,
    eval_size: int = DEFAULT_EVAL_SIZE,
) -> tuple[list[tuple[str, Row]], list[tuple[str, Row]]]:
    """Train and eval rows, each paired with its problem type's name.

    Types are taken round-robin so every type is equally represented; one RNG
    stream and one set of seen questions keep the two splits disjoint.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: list[list[tuple[str, Row]]] = []
    index = 0
    for size in (train_size, eval_size):
        rows: list[tuple[str, Row]] = []
        for _ in range(size):
            generator = PROBLEM_TYPES[index % len(PROBLEM_TYPES)]
            index += 1
            for _ in range(MAX_TRIES):
                question, answer = generator(rng)
                if question not in seen:
                    break
            else:
                raise RuntimeError(f"{type_name(generator)}: no new question in {MAX_TRIES} tries")
            seen.add(question)
            rows.append((type_name(generator), {"question": question, "answer": answer}))
        splits.append(rows)
    return splits[0], splits[1]


def generate(
    seed: int = DEFAULT_SEED,
    train_size: int = DEFAULT_TRAIN_SIZE,
    eval_size: int = DEFAULT_EVAL_SIZE,
) -> tuple[list[Row], list[Row]]:
    """Train and eval rows of `{question, answer}`."""
    train, evaluation = generate_typed(seed, train_size, eval_size)
    return [row for _, row in train], [row for _, row in evaluation]


def dump(rows: list[Row]) -> str:
    """The exact text written to disk."""
    return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--train-size", type=int, default=DEFAULT_TRAIN_SIZE)
    parser.add_argument("--eval-size", type=int, default=DEFAULT_EVAL_SIZE)
    args = parser.parse_args(argv)
    train, evaluation = generate(args.seed, args.train_size, args.eval_size)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in ((TRAIN_FILE, train), (EVAL_FILE, evaluation)):
        path = args.out_dir / name
        path.write_text(dump(rows), encoding="utf-8", newline="\n")
        print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
