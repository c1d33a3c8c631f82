"""The router's held-out set: resources/router/heldout.jsonl, {"prompt", "task"} per line.

Written apart from the training templates (training/router_data.py) with other phrasings and other
words (names, places, objects, topics), plus real rows of the tasks' datasets from
resources/bench-sample and tests/fixtures/data (GSM8K, MathQA, CodeAlpaca,
CNN/DailyMail, arXiv, PAWS). Rebuild with `python -m training.router_heldout` (seeded).
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "resources" / "router" / "heldout.jsonl"

WHO = ["Beatrix", "Desmond", "Ingrid", "Rashid", "Wendell", "Yara", "Elio", "Marisol", "Thaddeus", "Annika",
       "Kofi", "Svetlana", "Ignacio", "Paloma", "Rupert", "Nadia"]
STUFF = ["lemons", "crayons", "seashells", "balloons", "comic books", "jars of honey", "bus passes", "candy bars",
         "keychains", "postcards", "tomatoes", "pairs of socks"]
TOWNS = ["Valparaiso", "Tromso", "Zanzibar", "Winnipeg", "Bruges", "Kyoto", "Mombasa", "Tbilisi", "Cusco", "Galway"]
TOPICS = ["ornithology", "glaciology", "opera", "cryptography", "horticulture", "sculpture", "oceanography"]


def _math(rng):
    a, b, c = rng.randint(3, 70), rng.randint(2, 9), rng.randint(2, 25)
    w, s = rng.choice(WHO), rng.choice(STUFF)
    return rng.choice([
        f"{w} picked {a} {s} on Saturday and {b} fewer on Sunday. Then {w} shared them evenly among {c % 5 + 2} "
        f"cousins. How many did each cousin receive?",
        f"At a fair, {s} cost {b} coins apiece. {w} brought {a} coins. What is the greatest number {w} can buy?",
        f"A cyclist covers {a} kilometres in {b} hours. At that pace, how long will {a * 3} kilometres take?",
        f"{w} saves ${c} each week. After how many weeks will {w} have at least ${a * 10}?",
        f"Twice a number increased by {c} equals {2 * a + c}. What is the number?",
        f"what is the remainder when {a * 37} is divided by {b} ?",
        f"a tank is filled by pipe a in {b} hours and emptied by pipe b in {c + b} hours . if both are opened , "
        f"how long to fill the tank ? a ) {b + 1} , b ) {b + 3} , c ) {c} , d ) {a} , e ) {a + c}",
        f"Determine x if {b}(x - {c}) = {b * (a - c)}.",
        f"Evaluate {a}^2 - {b}^3.",
        f"what percentage of {a * 4} is {a} ?",
        f"{w} has a garden that is {a} m long and {c} m wide. What is its area in square metres?",
        f"Three friends split {a * 3} {s} so that the first gets twice what the second gets and the third gets "
        f"{b} more than the second. How many {s} does the second friend get?",
        f"If {b} workers build a wall in {c} days, how many days would {b * 2} workers need?",
        f"Find the mean of {a}, {b}, {c} and {a + b}.",
        f"Convert {a * 12} inches to feet.",
    ])


def _code(rng):
    lang = rng.choice(["Python", "JavaScript", "Swift", "Haskell", "Perl", "Scala", "Lua", "R"])
    job = rng.choice(["rotates a matrix by 90 degrees", "chunks a list into groups of three",
                      "detects an anagram pair", "strips HTML tags from a page", "computes a running median",
                      "tallies how often each letter appears", "pads a number with leading zeros",
                      "renames every file in a folder to lower case", "checks that brackets are balanced"])
    bad = rng.choice(["nums = [3, 1, 2]\nnums = nums.sort()\nprint(nums[0])",
                      "const total = items.reduce((a, b) => a + b)\nconsole.log(totl)",
                      "if len(name) > 3:\nprint('long')", "SELECT * FROM users WHERE age > '30' ORDER age;",
                      "def mean(xs):\n    return sum(xs) / len(xs)\n\nmean([])"])
    return rng.choice([
        f"Write me a {lang} routine that {job}.", f"Could you code something that {job}?",
        f"Please implement, in {lang}, a helper that {job}.", f"Show a {lang} example that {job}.",
        f"My script crashes:\n{bad}\nWhat's wrong?", f"Explain line by line what this does:\n{bad}",
        f"{bad}", f"Turn this into idiomatic {lang}:\n{bad}",
        f"Build a command-line tool that {job}.", f"Write a SQL statement listing the {rng.randint(3, 20)} "
        f"most recent orders with their customer names.",
        f"Make a {lang} method to check whether a year is a leap year.",
        f"How do I read a text file line by line in {lang}?",
    ])


def _summarize(rng):
    town, w, t = rng.choice(TOWNS), rng.choice(WHO), rng.choice(TOPICS)
    sents = [
        f"{town.upper()} -- Heavy snowfall closed the main airport in {town} on Sunday, stranding thousands of travellers.",
        f"Airport director {w} said crews had worked around the clock but could not keep the runways clear.",
        f"Several airlines cancelled all flights until Tuesday and offered passengers hotel vouchers.",
        f"Meteorologists expect another {rng.randint(10, 60)} centimetres of snow before the weekend.",
        f"Local schools will remain closed, and the city has opened emergency shelters for the homeless.",
        f"A new exhibition on {t} opened at the national museum, drawing record crowds in its first week.",
        f"The curator, {w}, spent {rng.randint(2, 9)} years gathering objects from private collections abroad.",
        f"Visitors can also attend evening lectures given by leading experts in {t}.",
        f"we present a survey of recent advances in {t} , focusing on methods that rely on sparse measurements .",
        f"our analysis reveals that existing techniques fail when the signal to noise ratio is low .",
        f"to address this we introduce a hierarchical model and derive efficient inference procedures .",
        f"Ticket sales have already exceeded the organisers' forecasts for the whole season.",
        f"Union leaders said they would continue the strike until wages keep pace with inflation.",
    ]
    rng.shuffle(sents)
    art = " ".join(sents[:rng.randint(4, 10)])
    lead = rng.choice(["", "", "Could you recap this for me?\n\n", "Give a short overview of the passage below.\n",
                       "In a nutshell, what is this about?\n", "Make a concise digest of this report:\n",
                       "Summarise in three lines:\n", "Key takeaways, please:\n"])
    return lead + art


def _paraphrase(rng):
    w, a, b = rng.choice(WHO), rng.choice(TOWNS), rng.choice(TOWNS)
    y, t = rng.randint(1750, 2010), rng.choice(TOPICS)
    s = rng.choice([
        f"{w} founded the orchestra in {a} in {y} and conducted it until his death .",
        f"The bridge over the harbour of {a} was completed in {y} and links the old town to {b} .",
        f"Her research on {t} earned her a fellowship at the academy in {a}.",
        f"The festival takes place every August in {a} and attracts visitors from {b}.",
        f"In {y} the railway reached {a}, which soon became an important market town.",
        "The committee postponed its decision because several members were absent.",
        "Most visitors prefer to explore the island by bicycle rather than by car.",
        "The instructions were confusing, so nobody knew where to put the boxes.",
    ])
    lead = rng.choice(["", "", "", "Express this differently: ", "Can you word this another way? ",
                       "Rewrite the sentence below without changing its meaning.\n", "Find alternative wording for: ",
                       "Say the same thing using other words: ", "Rephrase for me: "])
    return lead + s


def _none(rng):
    w, town, t = rng.choice(WHO), rng.choice(TOWNS), rng.choice(TOPICS)
    return rng.choice([
        "good evening!", "Hey, what's up?", "thanks a lot", "Are you a robot?", "See you tomorrow.",
        f"What language do they speak in {town}?", f"Who discovered penicillin?",
        f"What is {t} and why does it matter?", f"Is {town} worth visiting in winter?",
        f"Write a limerick about a {rng.choice(['penguin', 'wizard', 'teapot'])}.",
        f"Suggest a name for a {rng.choice(['coffee shop', 'sailboat', 'hamster'])}.",
        f"How do I get rid of {rng.choice(['hiccups', 'a headache', 'jet lag'])}?",
        f"Compose a thank-you note to {w} for the lovely dinner.",
        f"What would happen if the moon disappeared?", "How long should I boil an egg?",
        f"I'm nervous about my exam on {t} tomorrow.", "Why do cats purr?",
        f"What are three good habits for staying healthy?", f"Tell me a fun fact about {town}.",
        f"Which planets have rings?", "Give me a motivational quote.",
        f"How many people live in {town}?", f"What's the weather usually like in {town} in July?",
        f"Recommend some podcasts about {t}.", "What is the best way to learn to swim as an adult?",
    ])


def _real_rows() -> list[dict]:
    """Rows of the real datasets shipped with the repo, as the prompt a user would type."""
    import pyarrow.parquet as pq

    out = []

    def jl(path):
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    bs, fx = ROOT / "resources" / "bench-sample", ROOT / "tests" / "fixtures" / "data"
    for p in (bs / "gsm8k.jsonl", fx / "gsm8k/main/test.jsonl", fx / "gsm8k/main/train.jsonl"):
        out += [{"prompt": r["question"], "task": "math", "source": "gsm8k"} for r in jl(p)]
    out += [{"prompt": f"{r['Problem']} {r['options']}", "task": "math", "source": "math_qa"} for r in jl(bs / "math_qa.jsonl")]
    out += [{"prompt": f"{r['Problem']} {r['options']}", "task": "math", "source": "math_qa"}
            for r in pq.read_table(fx / "math_qa/train.parquet").to_pylist()]
    with open(fx / "code_alpaca/train.csv", newline="", encoding="utf-8") as f:
        out += [{"prompt": (r["instruction"] + ("\n" + r["input"] if r["input"] else "")), "task": "code",
                 "source": "code_alpaca"} for r in csv.DictReader(f)]
    # python-codes-25k is left out: its instructions ("Help me set up my daily to-do list!") are chat
    # requests its answers happen to solve in Python; no text router can call them code.
    for p in (bs / "cnn_dailymail.jsonl", fx / "cnn_dailymail/3.0.0/test.jsonl"):
        out += [{"prompt": r["article"], "task": "summarize", "source": "cnn_dailymail"} for r in jl(p)]
    out += [{"prompt": r["article"], "task": "summarize", "source": "cnn_dailymail"}
            for r in pq.read_table(fx / "cnn_dailymail/3.0.0/train.parquet").to_pylist()]
    for p in (bs / "arxiv.jsonl", fx / "arxiv/train.jsonl"):
        out += [{"prompt": r["article"], "task": "summarize", "source": "arxiv"} for r in jl(p)]
    out += [{"prompt": r["sentence1"], "task": "paraphrase", "source": "paws"} for r in jl(bs / "paws.jsonl")]
    for p in (fx / "paws/labeled_final/train.csv", fx / "paws/labeled_final/test.csv"):
        with open(p, newline="", encoding="utf-8") as f:
            out += [{"prompt": r["sentence1"], "task": "paraphrase", "source": "paws"} for r in csv.DictReader(f)]
    seen, rows = set(), []
    for r in out:
        if r["prompt"] and r["prompt"].strip() and r["prompt"] not in seen:
            seen.add(r["prompt"])
            rows.append(r)
    return rows


def build(per_label: int = 50, seed: int = 2026) -> list[dict]:
    rng = random.Random(seed)
    rows = _real_rows()
    seen = {r["prompt"] for r in rows}
    for task, gen in (("math", _math), ("code", _code), ("summarize", _summarize), ("paraphrase", _paraphrase),
                      ("none", _none)):
        n = 0
        for _ in range(per_label * 40):
            if n == per_label:
                break
            text = gen(rng)
            if text not in seen:
                seen.add(text)
                rows.append({"prompt": text, "task": task, "source": "written"})
                n += 1
    return rows


def main() -> int:
    rows = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} prompts to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
