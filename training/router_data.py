"""Training prompts for the router, generated from templates with a seeded RNG.

Five labels: the four tasks and `none` (general chat, answered by the base model). Each task gets
prompts with and without its obvious keywords, short and long, and in the shapes of its datasets
(GSM8K word problems, MathQA's lower-cased items with options, CodeAlpaca instructions, news and
arXiv articles, PAWS sentences). The held-out set (router_heldout.py) is written separately, with
other templates and other words, so its score measures generalisation, not memory.

What goes where: a prompt that brings a text to condense is `summarize`; a sentence to say in
other words (or a bare encyclopedic sentence, as in PAWS) is `paraphrase`; a problem to compute
is `math`; anything about writing, reading or fixing a program is `code`; the rest is `none`.
"""
from __future__ import annotations

import random

NAMES = ["Natalia", "James", "Priya", "Tom", "Mei", "Carlos", "Aisha", "Liam", "Sofia", "Omar", "Emma", "Ravi",
         "Hannah", "Kenji", "Lucia", "Ben", "Fatima", "Noah", "Greta", "Ivan", "Zoe", "Mateo", "Chloe", "Yusuf"]
ITEMS = ["apples", "pencils", "stickers", "cookies", "marbles", "books", "cupcakes", "tickets", "shirts", "eggs",
         "candles", "flowers", "cards", "bottles", "toy cars", "muffins", "plants", "notebooks", "beads", "stamps"]
PLACES = ["Paris", "Lagos", "Toronto", "Osaka", "Lima", "Berlin", "Nairobi", "Melbourne", "Dublin", "Seoul",
          "Cairo", "Oslo", "Denver", "Manila", "Porto", "Krakow", "Austin", "Hanoi", "Quito", "Accra"]
FIELDS = ["economics", "biology", "music", "politics", "chemistry", "football", "architecture", "medicine",
          "literature", "astronomy", "law", "painting", "physics", "theatre", "geology", "linguistics"]
LANGS = ["Python", "JavaScript", "Java", "C++", "Go", "Rust", "TypeScript", "C#", "Ruby", "PHP", "Kotlin", "Bash"]


def _n(rng, lo=2, hi=90):
    return rng.randint(lo, hi)


# Nothing here is copied from the rows the held-out set takes from the real datasets.


# -- math ---------------------------------------------------------------------------------------
def _gsm8k(rng):
    a, b, c = _n(rng), _n(rng, 2, 12), _n(rng, 1, 30)
    name, other, item = rng.choice(NAMES), rng.choice(NAMES), rng.choice(ITEMS)
    t = rng.choice([
        f"{name} has {a} {item}. {other} gives {name} {b} times as many {item} as {name} already has. "
        f"How many {item} does {name} have now?",
        f"A store sells {item} for ${b} each. {name} buys {c} of them and pays with a ${a * 10} bill. "
        f"How much change does {name} get back?",
        f"{name} earns ${a} an hour babysitting. Yesterday she babysat for {b} hours and {c} minutes. "
        f"How much did she earn?",
        f"There are {a} students in a class. {b} of them are absent and the rest are split equally into "
        f"{rng.choice([2, 3, 4])} teams. How many students are on each team?",
        f"{name} runs {b} miles every day for {c} days. {other} runs {a} miles in total over the same period. "
        f"How many more miles did {name} run than {other}?",
        f"A baker makes {a} loaves of bread each morning. She sells {b} loaves every hour for {c % 8 + 1} hours. "
        f"How many loaves are left at the end?",
        f"{name} is {b} years old. Her mother is {c + 20} years older than her. In {a % 10 + 1} years, "
        f"what will be the sum of their ages?",
        f"The price of a jacket was ${a * 3}. It went on sale for {rng.choice([10, 20, 25, 30, 40])}% off. "
        f"What is the sale price?",
        f"{name} reads {b} pages on Monday and twice as many on Tuesday. If the book has {a * 5} pages, "
        f"how many pages are left to read?",
        f"A farmer has {a} chickens and {b} cows. How many legs do the animals have in total?",
        f"{name}'s car uses {b} gallons of gas to drive {a * 4} miles. How many gallons does she need to "
        f"drive {a * 10} miles?",
        f"A pool holds {a * 100} liters of water. A hose fills it at {b * 5} liters per minute. "
        f"How long does it take to fill the pool?",
        f"{name} buys {b} packs of {item} with {c} in each pack. She gives {a % 20} away. How many does she keep?",
    ])
    return t


def _mathqa(rng):
    a, b, c = _n(rng), _n(rng, 2, 20), _n(rng, 3, 60)
    opts = sorted(rng.sample(range(5, 500), 5))
    options = " , ".join(f"{k} ) {v}" for k, v in zip("abcde", opts))
    t = rng.choice([
        f"a train running at the speed of {c} km / hr crosses a pole in {b} seconds . what is the length of the train ?",
        f"if the average of {a} , {b} and x is {c} , what is the value of x ?",
        f"a shopkeeper sells an article for rs . {a * 10} at a profit of {b} % . find the cost price .",
        f"the ratio of boys to girls in a class is {b} : {c % 9 + 1} . if there are {a} boys , how many girls are there ?",
        f"a and b can do a piece of work in {b} days and {c} days respectively . in how many days can they "
        f"finish it together ?",
        f"what is the compound interest on rs . {a * 100} for {b % 4 + 1} years at {c % 12 + 2} % per annum ?",
        f"the sum of two numbers is {a + c} and their difference is {abs(a - c) or 2} . find the larger number .",
        f"a rectangle has a length of {c} cm and a width of {b} cm . what is its perimeter ?",
        f"how many numbers between {b} and {a * 10} are divisible by {rng.choice([3, 4, 6, 7, 9])} ?",
    ])
    return t + (f" {options}" if rng.random() < 0.6 else "")


def _math_short(rng):
    a, b, c = _n(rng, 2, 99), _n(rng, 2, 40), _n(rng, 2, 12)
    x = rng.choice("xyzn")
    core = rng.choice([
        f"{a}x + {b} = {a * c + b}".replace("x", x), f"{a} * {b} - {c}", f"{a}% of {b * 10}", f"{x}^2 - {c * c} = 0",
        f"the derivative of {x}^{c % 5 + 2} + {b}{x}", f"the integral of {c}{x}^2 from 0 to {b % 5 + 1}",
        f"the area of a circle with radius {c}", f"the least common multiple of {a} and {b}",
        f"{a} divided by {c}", f"the square root of {a * a}", f"{b}/{c} + {c}/{b}", f"log base 2 of {2 ** (c % 10)}",
        f"the sum of the first {a} positive integers", f"the probability of rolling two sixes with two dice",
        f"the slope of the line through ({c}, {b}) and ({a}, {c})", f"{a} factorial divided by {a - 1} factorial",
    ])
    lead = rng.choice(["Solve", "Calculate", "Compute", "What is", "Find", "Work out", "Evaluate", "Can you solve",
                       "Please compute", "Help me with this math problem:", "Quick math:", "", "I need", "Determine"])
    q = rng.choice(["", "?", ".", " step by step.", " and show your work.", ", please."])
    return f"{lead} {core}{q}".strip()


def _math_word_nokey(rng):
    a, b = _n(rng, 3, 60), _n(rng, 2, 9)
    name = rng.choice(NAMES)
    return rng.choice([
        f"If {name} drives at {a} mph for {b} hours, how far does she go?",
        f"I have {a} dollars and spend a third of it on lunch. How much is left?",
        f"A recipe needs {b} cups of flour for {a % 12 + 2} cookies. How much flour for {a * 2} cookies?",
        f"{name} scored {a}, {a + b} and {a - b} on three tests. What is her average score?",
        f"How many minutes are there in {b} and a half hours?",
        f"Split a ${a * 7} bill between {b} people with a 15% tip. What does each pay?",
        f"If a shirt costs ${a} after a {b * 5}% discount, what was the original price?",
        f"What's {a} times {b} plus {a}?",
        f"Convert {a} {rng.choice(['kilograms to pounds', 'miles to kilometres', 'litres to gallons', 'hours to seconds'])}.",
        f"How many {rng.choice(['centimetres are in', 'ounces are in', 'seconds are in', 'grams are in'])} {a} "
        f"{rng.choice(['metres', 'pounds', 'days', 'kilograms'])}?",
        f"{a} {rng.choice(['km', 'feet', 'yards', 'cups'])} in {rng.choice(['miles', 'metres', 'inches', 'ml'])}?",
    ])


# -- code ---------------------------------------------------------------------------------------
_TASKS = ["reverses a string", "checks whether a number is prime", "returns the n-th Fibonacci number",
          "removes duplicates from a list", "counts the vowels in a sentence", "sorts a list of dictionaries by a key",
          "merges two sorted arrays", "finds the longest word in a string", "converts Celsius to Fahrenheit",
          "validates an email address", "flattens a nested list", "computes the factorial of n",
          "reads a CSV file and prints the average of a column", "checks if a string is a palindrome",
          "finds the maximum element in an array", "calculates the GCD of two numbers", "parses a JSON string",
          "implements binary search", "generates all permutations of a list", "counts word frequencies in a text",
          "returns the sum of the digits of an integer", "downloads a web page and counts the links",
          "finds the second largest number in a list", "capitalizes the first letter of each word"]
_SNIPPETS = [
    "def add(a, b):\n    return a + b\n\nprint(add(2, '3'))",
    "for i in range(10)\n    print(i)",
    "function sum(arr) {\n  let total = 0;\n  for (let i = 0; i <= arr.length; i++) total += arr[i];\n  return total;\n}",
    "SELECT name, COUNT(*) FROM orders GROUP BY customer_id;",
    "x = [1, 2, 3]\ny = x\ny.append(4)\nprint(x)",
    "public static int max(int[] a) { int m = 0; for (int v : a) if (v > m) m = v; return m; }",
    "import numpy as np\narr = np.array([1, 2, 3])\nprint(arr.reshape(2, 2))",
    "while True:\n    line = input()\n    if line == 'q': break\n    print(line.upper())",
    "class Stack:\n    def __init__(self):\n        self.items = []\n    def pop(self):\n        return self.items.pop()",
    "#include <stdio.h>\nint main() { int a[5]; a[5] = 1; printf(\"%d\", a[5]); }",
    "df = pd.read_csv('data.csv')\ndf.groupby('city')['price'].mean()",
    "let x = 5;\nif (x = 10) { console.log('ten'); }",
]


def _code(rng):
    lang, task = rng.choice(LANGS), rng.choice(_TASKS)
    snippet = rng.choice(_SNIPPETS)
    return rng.choice([
        f"Write a {lang} function that {task}.",
        f"Can you program something that {task}?", f"Code a {lang} method that {task}.",
        f"Write an algorithm that {task}.", f"I want a {lang} procedure that {task}.",
        f"Please write a script that {task}.", f"Show me how to write code that {task}.",
        f"Create a program in {lang} that {task}.",
        f"Write code that {task}.",
        f"Implement a function that {task}. Write corresponding code in Python.",
        f"How do I write a {lang} script that {task}?",
        f"Generate a {lang} class with a method that {task}.",
        f"I need a one-liner that {task}.",
        f"Give me a {lang} snippet that {task}, with comments.",
        f"Construct a SQL query to find all customers who placed more than {_n(rng, 2, 9)} orders last month.",
        f"Create an HTML page with a form that has a name field, an email field and a submit button.",
        f"Write a regular expression that matches {rng.choice(['US phone numbers', 'dates in YYYY-MM-DD form', 'hex colors', 'IPv4 addresses'])}.",
        f"Fix the bug in this code:\n{snippet}",
        f"What does this code do?\n\n{snippet}",
        f"Why does this throw an error?\n{snippet}",
        f"Refactor this to be more readable:\n{snippet}",
        f"Convert this to {lang}:\n{snippet}",
        f"{snippet}",
        f"{snippet}\n\nThis doesn't work, can you help?",
        f"Traceback (most recent call last):\n  File \"app.py\", line {_n(rng)}, in <module>\n    main()\n"
        f"TypeError: 'NoneType' object is not subscriptable\nHow do I fix this?",
        f"How can I reverse a list in {lang}?",
        f"What's the difference between a list and a tuple in Python, with an example?",
        f"Edit the following code so that it {task}:\n{snippet}",
        f"Optimize this {lang} function that {task} for speed.",
        f"Write unit tests for a function that {task}.",
        f"Using a for loop, print all the odd numbers between 1 and {_n(rng, 10, 100)}.",
        f"Design a REST API endpoint in {lang} that returns a list of users as JSON.",
    ])


# -- summarize ----------------------------------------------------------------------------------
def _news_sentences(rng):
    city, person, other = rng.choice(PLACES), rng.choice(NAMES), rng.choice(NAMES)
    n, y = _n(rng, 3, 900), rng.randint(1990, 2024)
    pool = [
        f"{city.upper()} (Reuters) -- Officials in {city} announced on Tuesday a plan to spend ${n} million on new "
        f"public transport lines over the next decade.",
        f"The mayor, {person} {rng.choice(['Adams', 'Okafor', 'Lee', 'Moreau', 'Silva'])}, said the project would "
        f"cut commuting times by nearly a third.",
        f"Critics argued that the money would be better spent on housing, which has become unaffordable for many "
        f"residents.",
        f"According to a report released last month, rents in the city rose by {n % 30 + 2} percent in {y}.",
        f"{other}, a local shop owner, told reporters that business had slowed since the roadworks began.",
        "The council is expected to vote on the proposal next week, and a majority of members have signalled support.",
        f"Police said {n % 20 + 2} people were arrested after protests turned violent near the central station.",
        f"The company reported quarterly profits of ${n} million, beating analysts' expectations.",
        "Shares rose sharply in early trading before falling back by the close.",
        f"Scientists at the University of {city} found that the new treatment reduced symptoms in {n % 60 + 20} "
        f"percent of patients.",
        "The study, published in a leading journal, involved more than two thousand volunteers over five years.",
        f"Rescue teams worked through the night after heavy rain caused flooding in several districts of {city}.",
        "Residents were urged to stay indoors and avoid travelling unless absolutely necessary.",
        f"The minister resigned on Friday following allegations that she had misused public funds in {y}.",
        "An independent inquiry will examine the claims and report its findings by the end of the year.",
        f"The team won the championship for the {rng.choice(['second', 'third', 'fifth'])} time after a dramatic "
        f"penalty shoot-out.",
        f"Fans gathered in the streets of {city} to celebrate late into the night.",
        "Experts warn that the trend could continue unless governments act quickly.",
    ]
    return pool


def _science_sentences(rng):
    f = rng.choice(FIELDS)
    n = _n(rng, 2, 99)
    return [
        f"in this paper we study the problem of estimating parameters in {f} models with missing data .",
        "we propose a new method based on a variational approximation of the posterior distribution .",
        f"our experiments on {n} benchmark datasets show that the method outperforms existing approaches .",
        "the main contribution of this work is a proof that the estimator is consistent under mild conditions .",
        "previous work has focused on the asymptotic regime , while little is known about finite samples .",
        "we also discuss the computational cost of the algorithm and show that it scales linearly .",
        f"recent observations of {n} galaxies suggest that dark matter halos are less dense than predicted .",
        "these results have important implications for the design of future experiments .",
        "the remainder of the paper is organized as follows : section 2 introduces the model .",
        "numerical simulations confirm the theoretical predictions with high accuracy .",
        "finally , we outline several open questions and directions for future research .",
    ]


def _story_sentences(rng):
    a, b, place = rng.choice(NAMES), rng.choice(NAMES), rng.choice(PLACES)
    return [
        f"Last summer {a} and {b} travelled to {place} to visit their grandmother.",
        "The journey took two days by train, and they spent most of it playing cards.",
        "When they arrived, the house was smaller than they remembered, but the garden was full of flowers.",
        "Their grandmother told them stories about the war and the years she spent working in a factory.",
        f"On the last evening, {a} found an old photograph hidden in a drawer.",
        "It showed a young woman standing beside a man nobody in the family had ever mentioned.",
        "The meeting started at nine and covered the budget, the hiring plan and the office move.",
        f"{a} presented the sales figures, which were up compared to last quarter.",
        "The team agreed to postpone the product launch until the testing is finished.",
        f"Action items: {b} will update the roadmap and share it by Friday.",
        "Customers have complained about long waiting times on the support line.",
        "Management has promised to hire more staff and introduce a callback system.",
    ]


def _article(rng, k):
    pool = rng.choice([_news_sentences, _science_sentences, _story_sentences])(rng)
    rng.shuffle(pool)
    if rng.random() < 0.3:  # mix two sources: long articles drift
        pool += rng.choice([_news_sentences, _story_sentences])(rng)
    return " ".join(pool[:k])


def _summarize(rng):
    art = _article(rng, rng.randint(3, 14))
    lead = rng.choice([
        "Summarize the following text.\n\n", "Summarize this article:\n", "TL;DR:\n", "Can you give me a short summary of this?\n\n",
        "Give me the gist of this:\n", "What are the key points of the following?\n\n", "Condense this into two sentences:\n",
        "Boil this down for me:\n", "Please write a brief summary.\n\n", "Sum this up in a few bullet points:\n",
        "Write an abstract for this:\n", "Shorten this to one paragraph:\n", "Give me the highlights:\n",
        "", "", "", "",
    ])
    tail = rng.choice(["", "", "", "\n\nSummarize the above.", "\n\nTL;DR?", "\n\nCan you shorten that?",
                       "\n\nWhat's the main point here?"])
    return f"{lead}{art}{tail}"


def _summarize_short(rng):
    """An explicit request to summarize a text of only one or two sentences: the instruction, not
    the length, says summarize (a short text alone reads as a sentence to reword)."""
    art = _article(rng, rng.randint(1, 2))
    lead = rng.choice(["Summarize: ", "Summarize this: ", "Summarize this article: ", "Summarise: ", "TL;DR: ",
                       "Give me a one-line summary: ", "Sum up: ", "Summary please: ", "Briefly summarize: "])
    return f"{lead}{art}"


# -- paraphrase ---------------------------------------------------------------------------------
def _encyclopedic(rng):
    a, p, q = rng.choice(NAMES), rng.choice(PLACES), rng.choice(PLACES)
    y, f = rng.randint(1700, 2015), rng.choice(FIELDS)
    s = rng.choice([
        f"{a} was born in {p} in {y} and later moved to {q} , where he studied {f} .",
        f"The {y} season was the {rng.randint(2, 60)}th season of the {p} football league .",
        f"In {y} , the company opened its first office in {p} , followed by a branch in {q} .",
        f"The river flows through {p} before joining the sea near {q} .",
        f"{a} is a professor of {f} at the University of {p} and a member of the national academy .",
        f"It was released as a single in {y} and reached number {rng.randint(1, 40)} on the charts .",
        f"The village is located {rng.randint(2, 40)} km north of {p} and has a population of about {rng.randint(200, 9000)} .",
        f"After the war , the family returned to {p} , where {a} worked as a teacher .",
        f"The album was recorded in {p} and produced by {a} in {y} .",
        f"The station was opened in {y} and is served by trains to {p} and {q} .",
        f"She married {a} in {y} , and they had three children together .",
        f"The building was designed by {a} and completed in {y} in a neoclassical style .",
    ])
    if rng.random() < 0.5:  # PAWS spaces its punctuation; people do not
        s = s.replace(" ,", ",").replace(" .", ".")
    return s


def _plain_sentence(rng):
    a = rng.choice(NAMES)
    return rng.choice([
        "The meeting has been moved to Thursday because the manager is travelling.",
        "Our team finished the project ahead of schedule and under budget.",
        "Regular exercise improves both physical health and mental well-being.",
        f"{a} couldn't attend the party because she had to work late.",
        "The new policy will take effect at the beginning of next month.",
        "Sunsets paint the sky with vibrant hues, marking the transition from day to night.",
        "Please let me know if you have any questions about the invoice.",
        "The restaurant was crowded, so we decided to eat somewhere else.",
        "Technology has changed the way people communicate with each other.",
        "I am writing to inform you that your application has been approved.",
        "The weather was so bad that the flight was delayed for three hours.",
        "Reading every day is one of the best ways to expand your vocabulary.",
        "The board approved the budget after a long debate.",
        "Because the road was closed, the delivery arrived two days late.",
        "Many students struggle to balance their studies with part-time jobs.",
        "The museum will be closed for renovation until the end of the year.",
        "Several volunteers helped clean the beach after the storm.",
        "The results of the survey surprised even the researchers who designed it.",
        "Despite the rain, thousands of fans waited outside the stadium.",
        "The library offers free courses for adults who want to learn computer skills.",
    ])


def _paraphrase(rng):
    s = _encyclopedic(rng) if rng.random() < 0.55 else _plain_sentence(rng)
    if rng.random() < 0.2:
        s = s + " " + (_encyclopedic(rng) if rng.random() < 0.5 else _plain_sentence(rng))
    lead = rng.choice([
        "Paraphrase the following text.\n\n", "Paraphrase: ", "Reword this sentence: ", "Rephrase this: ",
        "Say this in a different way: ", "Put this in your own words: ", "Rewrite this so it means the same thing "
        "but uses different words:\n", "Can you rephrase this sentence?\n", "Give me another way to say: ",
        "Restate the following: ", "How else could I say this? ", "Rewrite: ", "Make this sound different: ",
        "Write this sentence another way: ", "Reformulate: ", "", "", "", "", "",
    ])
    tail = rng.choice(["", "", "", "\n\nReword that.", "\n\nSay it differently, please."])
    return f"{lead}{s}{tail}"


# -- none (general chat) -----------------------------------------------------------------------
def _chat(rng):
    p, f, a = rng.choice(PLACES), rng.choice(FIELDS), rng.choice(NAMES)
    n = _n(rng, 2, 60)
    return rng.choice([
        "hi", "Hello!", "hey there", "Good morning!", "thanks, that helped", "Thank you so much!", "How are you today?",
        "Who are you?", "What can you do?", "ok", "bye", "lol that's funny", "Can you help me?",
        f"What is the capital of {rng.choice(['France', 'Kenya', 'Peru', 'Japan', 'Canada', 'Norway'])}?",
        f"Who wrote {rng.choice(['Pride and Prejudice', 'Hamlet', 'War and Peace', 'Don Quixote', '1984'])}?",
        f"When did the {rng.choice(['First World War', 'French Revolution', 'Cold War', 'Renaissance'])} begin?",
        f"How many {rng.choice(['moons does Jupiter have', 'bones are in the human body', 'countries are in Africa', 'players are on a soccer team', 'legs does a spider have'])}?",
        f"What is the tallest mountain in {rng.choice(['Europe', 'Africa', 'the world', 'Japan'])}?",
        f"Tell me something interesting about {f}.",
        f"Explain how {rng.choice(['vaccines work', 'photosynthesis works', 'the stock market works', 'rainbows form', 'airplanes fly', 'the immune system works'])}.",
        f"Why is the sky blue?", "What causes earthquakes?", "What's the difference between weather and climate?",
        f"Write a poem about {rng.choice(['autumn', 'the ocean', 'love', 'a lonely robot', 'my cat', 'winter mornings'])}.",
        f"Write a short story about a dragon who is afraid of {rng.choice(['fire', 'the dark', 'heights'])}.",
        f"Tell me a joke about {rng.choice(['cats', 'programmers', 'teachers', 'the weather'])}.",
        f"Draft an email to my landlord asking to fix the {rng.choice(['heating', 'leaking tap', 'broken window'])}.",
        f"Write a birthday message for my friend {a}.",
        f"Can you recommend a good {rng.choice(['book', 'movie', 'podcast', 'board game'])} for a rainy weekend?",
        f"What should I see in {p} if I only have {n % 5 + 1} days?", f"Plan a {n % 7 + 2}-day trip to {p} for me.",
        f"How can I {rng.choice(['sleep better', 'learn a language faster', 'stop procrastinating', 'save money', 'be more confident'])}?",
        f"Give me some tips for a job interview in {f}.",
        f"What's a good recipe for {rng.choice(['dinner tonight', 'banana bread', 'a vegan curry', 'pancakes'])}?",
        f"Translate '{rng.choice(['good morning', 'where is the station', 'thank you very much'])}' into "
        f"{rng.choice(['Spanish', 'French', 'German', 'Japanese'])}.",
        f"What does the word '{rng.choice(['ephemeral', 'ubiquitous', 'serendipity', 'pragmatic'])}' mean?",
        f"I'm {n} years old and want to start running. Any advice?",
        f"I feel {rng.choice(['stressed', 'tired', 'lonely', 'anxious'])} lately. What can I do?",
        f"My {rng.choice(['sister', 'friend', 'boss'])} is upset with me. How should I apologize?",
        f"Is it better to rent or buy a house in {p}?", "What do you think about artificial intelligence?",
        f"Which is better for a beginner, the guitar or the piano?", "Should I learn to drive or keep taking the bus?",
        f"What are the health benefits of {rng.choice(['green tea', 'walking', 'yoga', 'fasting'])}?",
        f"Who was {rng.choice(['Marie Curie', 'Napoleon', 'Nelson Mandela', 'Frida Kahlo'])}?",
        f"Describe the culture of {p} in a few sentences.", "What's the meaning of life?",
        f"Can you tell me the history of {rng.choice(['the Roman Empire', 'jazz', 'the internet', 'chess'])}?",
        f"What are some fun things to do with kids on a {rng.choice(['rainy day', 'weekend', 'holiday'])}?",
        f"Help me choose a name for my {rng.choice(['dog', 'bakery', 'band', 'blog'])}.",
        f"What is {f}?", f"Is {f} a good career choice?", "Do you have feelings?", "What day is it today?",
        f"My flight to {p} got cancelled. What are my options?",
        "I had a really long day at work and I just want to talk.",
        f"Compare the climate of {p} and {rng.choice(PLACES)}.",
        f"Give me {n % 8 + 3} ideas for a {rng.choice(['birthday party', 'team outing', 'first date', 'science fair project'])}.",
        "What are the rules of chess?", "How do I make friends in a new city?",
    ])


GENERATORS = {
    "math": [(_gsm8k, 4), (_mathqa, 2), (_math_short, 3), (_math_word_nokey, 2)],
    "code": [(_code, 1)],
    "summarize": [(_summarize, 3), (_summarize_short, 1)],
    "paraphrase": [(_paraphrase, 1)],
    "none": [(_chat, 1)],
}


def training_prompts(per_label: int = 400, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, label) pairs, `per_label` of each label, unique, in a seeded order."""
    rng = random.Random(seed)
    out = []
    for label, gens in GENERATORS.items():
        fns = [fn for fn, w in gens for _ in range(w)]
        seen: set[str] = set()
        tries = 0
        while len(seen) < per_label and tries < per_label * 50:
            tries += 1
            text = rng.choice(fns)(rng)
            if text not in seen:
                seen.add(text)
                out.append((text, label))
    rng.shuffle(out)
    return out
