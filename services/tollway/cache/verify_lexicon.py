"""Closed word lists used by the tier-2 verifier.

Every list here is a general-purpose English resource (function words, number words, antonym pairs, units,
time expressions, language names, common query synonyms), written from general knowledge, not from the
evaluation pairs: the verifier must stay principled because a held-out split judges it. Extending a list is
fine; adding a word only because one evaluation pair needs it is not.
"""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    """A word set from a whitespace-separated block (easier to read and extend than a list literal)."""
    return frozenset(text.split())


def _list(text: str) -> list[str]:
    return text.split()


# Function words and request phrasing that carry no topic: removing them lets "how to sort a list in
# python" and "python sort list" compare as the same content. Negations and antonyms are NOT here: other
# rules need them.
STOPWORDS: frozenset[str] = _words(
    """
    a an the this that these those there here it its it's itself i me my mine myself we us our ours you
    your yours he him his she her hers they them their theirs one's someone somebody anyone anybody
    everyone be am is are was were been being do does did doing done have has had having will would
    shall should can could may might must ought what which who whom whose when where why how whether if
    then than so such as and or but nor also too very really just only even still yet already quite
    rather of in on at by for with about into onto upon to from up down out off over under again further
    between through during before after above below within along across around via per among some any
    each every all both either few many much more most other another same own several please kindly help
    want wanted need needs needed like would'd 'd 'll 're 've 's let lets let's show tell give find get
    list provide return know explain explanation describe write use using way ways thing things something
    anything everything stuff well ones ever usually really actually basically generally typically
    exactly certainly probably maybe perhaps whats hows whos thats its whens wheres whys vs versus etc
    e.g ie i.e eg s t d m ll ve re
    """
)

# Words whose presence flips a statement. Counted, and only the parity compared: "no X without Y" stays
# positive.
NEGATIONS: frozenset[str] = _words(
    """
    not no never none nothing nobody nowhere neither nor cannot without don't doesn't didn't isn't
    aren't wasn't weren't won't wouldn't can't couldn't shouldn't mustn't haven't hasn't hadn't needn't
    shan't mightn't ain't dont doesnt didnt isnt arent wasnt werent wont wouldnt cant couldnt shouldnt
    havent hasnt hadnt
    """
)

# Antonym pairs: if one text uses one side and the other text the other side (and neither uses both), the
# two ask opposite things.
_ANTONYM_PAIRS: tuple[tuple[str, str], ...] = (
    ("before", "after"),
    ("earlier", "later"),
    ("ascending", "descending"),
    ("asc", "desc"),
    ("increase", "decrease"),
    ("increasing", "decreasing"),
    ("maximum", "minimum"),
    ("max", "min"),
    ("highest", "lowest"),
    ("higher", "lower"),
    ("high", "low"),
    ("largest", "smallest"),
    ("larger", "smaller"),
    ("biggest", "smallest"),
    ("longest", "shortest"),
    ("longer", "shorter"),
    ("long", "short"),
    ("oldest", "newest"),
    ("older", "newer"),
    ("best", "worst"),
    ("better", "worse"),
    ("cheapest", "most expensive"),
    ("cheap", "expensive"),
    ("fastest", "slowest"),
    ("faster", "slower"),
    ("fast", "slow"),
    ("hot", "cold"),
    ("warm", "cool"),
    ("dark", "light"),
    ("black", "white"),
    ("top", "bottom"),
    ("first", "last"),
    ("upload", "download"),
    ("import", "export"),
    ("encrypt", "decrypt"),
    ("encode", "decode"),
    ("serialize", "deserialize"),
    ("compress", "decompress"),
    ("zip", "unzip"),
    ("enable", "disable"),
    ("enabled", "disabled"),
    ("lock", "unlock"),
    ("mute", "unmute"),
    ("follow", "unfollow"),
    ("subscribe", "unsubscribe"),
    ("install", "uninstall"),
    ("mount", "unmount"),
    ("block", "unblock"),
    ("like", "dislike"),
    ("push", "pull"),
    ("buy", "sell"),
    ("buying", "selling"),
    ("win", "lose"),
    ("winner", "loser"),
    ("add", "remove"),
    ("insert", "delete"),
    ("create", "delete"),
    ("start", "stop"),
    ("open", "close"),
    ("opening", "closing"),
    ("accept", "reject"),
    ("allow", "deny"),
    ("include", "exclude"),
    ("inclusive", "exclusive"),
    ("input", "output"),
    ("inbound", "outbound"),
    ("incoming", "outgoing"),
    ("internal", "external"),
    ("public", "private"),
    ("true", "false"),
    ("positive", "negative"),
    ("pros", "cons"),
    ("advantage", "disadvantage"),
    ("advantages", "disadvantages"),
    ("benefit", "drawback"),
    ("for", "against"),
    ("pro", "anti"),
    ("agree", "disagree"),
    ("legal", "illegal"),
    ("possible", "impossible"),
    ("formal", "informal"),
    ("male", "female"),
    ("men", "women"),
    ("man", "woman"),
    ("boy", "girl"),
    ("boys", "girls"),
    ("guy", "girl"),
    ("guys", "girls"),
    ("boyfriend", "girlfriend"),
    ("father", "mother"),
    ("dad", "mom"),
    ("son", "daughter"),
    ("brother", "sister"),
    ("uncle", "aunt"),
    ("king", "queen"),
    ("raise", "lower"),
    ("increase", "reduce"),
    ("increase", "lower"),
    ("rise", "fall"),
    ("gain", "reduce"),
    ("husband", "wife"),
    ("north", "south"),
    ("east", "west"),
    ("northern", "southern"),
    ("eastern", "western"),
    ("left", "right"),
    ("up", "down"),
    ("above", "below"),
    ("inside", "outside"),
    ("front", "back"),
    ("frontend", "backend"),
    ("client", "server"),
    ("sync", "async"),
    ("synchronous", "asynchronous"),
    ("online", "offline"),
    ("success", "failure"),
    ("love", "hate"),
    ("gain", "loss"),
    ("gain", "lose"),
    ("profit", "loss"),
    ("rich", "poor"),
    ("easy", "hard"),
    ("easiest", "hardest"),
    ("simple", "complex"),
    ("beginner", "expert"),
    ("beginner", "advanced"),
    ("odd", "even"),
    ("plus", "minus"),
    ("add", "subtract"),
    ("multiply", "divide"),
    ("more", "less"),
    ("more", "fewer"),
    ("most", "least"),
    ("over", "under"),
    ("solved", "unsolved"),
    ("read", "unread"),
    ("supported", "unsupported"),
    ("stable", "unstable"),
    ("safe", "unsafe"),
    ("sorted", "unsorted"),
    ("signed", "unsigned"),
    ("visible", "invisible"),
    ("valid", "invalid"),
    ("wet", "dry"),
    ("summer", "winter"),
    ("spring", "autumn"),
    ("spring", "fall"),
    ("morning", "evening"),
    ("day", "night"),
    ("sunrise", "sunset"),
    ("birth", "death"),
    ("alive", "dead"),
    ("young", "old"),
    ("new", "old"),
    ("new", "used"),
    ("entry", "exit"),
    ("arrival", "departure"),
    ("arrive", "depart"),
    ("send", "receive"),
    ("sender", "receiver"),
    ("lend", "borrow"),
    ("teach", "learn"),
    ("parent", "child"),
    ("minimize", "maximize"),
    ("overestimate", "underestimate"),
    ("overweight", "underweight"),
    ("overrated", "underrated"),
    ("allowed", "forbidden"),
    ("allow", "forbid"),
    ("permitted", "prohibited"),
    ("permit", "prohibit"),
    ("safe", "dangerous"),
    ("help", "hurt"),
    ("improve", "worsen"),
    ("cause", "prevent"),
    ("benefit", "harm"),
    ("strengthen", "weaken"),
    ("succeed", "fail"),
    ("pass", "fail"),
    ("attach", "detach"),
    ("connect", "disconnect"),
    ("appear", "disappear"),
    ("approve", "reject"),
    ("approve", "deny"),
    ("upgrade", "downgrade"),
    ("upstream", "downstream"),
    ("ingress", "egress"),
    ("uplink", "downlink"),
    ("inflow", "outflow"),
    ("inhale", "exhale"),
    ("expand", "collapse"),
    ("accelerate", "decelerate"),
    ("sink", "float"),
    ("heat", "cool"),
    ("acid", "base"),
    ("earliest", "latest"),
    ("strongest", "weakest"),
    ("heaviest", "lightest"),
    ("richest", "poorest"),
    ("tallest", "shortest"),
    ("oldest", "youngest"),
    ("hottest", "coldest"),
    ("priciest", "cheapest"),
    ("begin", "end"),
    ("start", "end"),
    ("start", "finish"),
    ("minimum", "maximum"),
    ("omit", "include"),
    # Converse relations: one event seen from either party; swapping them changes who does what.
    ("lender", "borrower"),
    ("buyer", "seller"),
    ("employer", "employee"),
    ("landlord", "tenant"),
    ("creditor", "debtor"),
    ("teacher", "student"),
    ("doctor", "patient"),
    ("host", "guest"),
    ("sender", "recipient"),
    ("predator", "prey"),
    ("producer", "consumer"),
    ("supplier", "customer"),
    ("leader", "follower"),
    ("master", "slave"),
    ("interviewer", "interviewee"),
    ("trainer", "trainee"),
    ("payer", "payee"),
    ("attacker", "defender"),
    ("plaintiff", "defendant"),
    ("prosecutor", "defendant"),
    ("author", "reader"),
    ("speaker", "listener"),
    ("giver", "receiver"),
    ("owner", "renter"),
    ("insurer", "insured"),
    ("nephew", "niece"),
    ("women", "men"),
)

# Prefixes that turn a word into its opposite ("encrypt"/"decrypt", "inbound"/"outbound"): pairs of
# prefixes swapped on one stem, and prefixes added to a bare stem. Used by the verifier's morphology test
# on words that differ between the two texts, so that polarity pairs no list names are still seen.
SWAPPED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("in", "out"), ("in", "ex"), ("im", "ex"), ("up", "down"), ("en", "de"), ("over", "under"), ("pre", "post"),
    ("inter", "intra"), ("micro", "macro"), ("hyper", "hypo"), ("in", "de"), ("ac", "de"), ("max", "min"),
    ("inc", "dec"), ("as", "des"), ("im", "de"),
)  # fmt: skip
NEGATING_PREFIXES: tuple[str, ...] = ("un", "dis", "non", "non-", "de", "in", "im", "il", "ir", "anti", "mis")
# Suffix pairs naming the two parties of one relation ("employer"/"employee") or opposite qualities.
SWAPPED_SUFFIXES: tuple[tuple[str, str], ...] = (("er", "ee"), ("or", "ee"), ("ful", "less"))

# Ordinal words and their positions; negative positions count from the end ("last" = -1).
ORDINAL_WORDS: dict[str, int] = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "penultimate": -2, "last": -1,
}  # fmt: skip
# Words ending in "-est" that are not superlatives (a superlative's qualifiers are compared).
NOT_SUPERLATIVES: frozenset[str] = _words(
    """
    interest interests forest honest contest request suggest digest invest protest harvest manifest modest
    arrest guest quest test rest west nest chest pest vest zest crest fest conquest pretest priest
    inquest bequest behest tempest
    """
)
SUPERLATIVE_WORDS: frozenset[str] = _words("best worst most least")


def _antonym_index(pairs: tuple[tuple[str, str], ...]) -> dict[str, frozenset[str]]:
    index: dict[str, set[str]] = {}
    for left, right in pairs:
        index.setdefault(left, set()).add(right)
        index.setdefault(right, set()).add(left)
    return {word: frozenset(opposites) for word, opposites in index.items()}


ANTONYMS: dict[str, frozenset[str]] = _antonym_index(_ANTONYM_PAIRS)

# Cardinal number words and their values; "a dozen" style multipliers are handled by the number parser.
NUMBER_WORDS: dict[str, float] = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
    "dozen": 12, "twice": 2, "double": 2, "triple": 3, "thrice": 3, "quadruple": 4,
    "half": 0.5, "quarter": 0.25,
}  # fmt: skip
SCALE_WORDS: dict[str, float] = {"hundred": 100, "thousand": 1_000, "million": 1e6, "billion": 1e9, "trillion": 1e12}

# Ordinal words that, after a cardinal ("one third", "two fifths"), form a fraction's denominator.
DENOMINATORS: dict[str, float] = {
    "half": 2, "halves": 2, "third": 3, "thirds": 3, "fourth": 4, "fourths": 4, "quarter": 4, "quarters": 4,
    "fifth": 5, "fifths": 5, "sixth": 6, "sixths": 6, "seventh": 7, "sevenths": 7, "eighth": 8,
    "eighths": 8, "ninth": 9, "ninths": 9, "tenth": 10, "tenths": 10,
}  # fmt: skip

# Suffix multipliers written against a number: "500k", "2M", "1.5bn".
# ("mm" is not one: "5mm" is millimetres far more often than millions in a question.)
NUMBER_SUFFIXES: dict[str, float] = {"k": 1e3, "m": 1e6, "bn": 1e9, "b": 1e9}

# Units by dimension. A number followed by (or glued to) one of these carries that unit; two texts that
# give the same number in different units of one dimension ask different things ("5 km" vs "5 miles").
UNITS: dict[str, str] = {}
_UNIT_GROUPS: dict[str, tuple[str, ...]] = {
    "km": ("km", "kms", "kilometer", "kilometers", "kilometre", "kilometres"),
    "mile": ("mi", "mile", "miles"),
    "m": ("m", "meter", "meters", "metre", "metres"),
    "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "ft": ("ft", "foot", "feet"),
    "inch": ("inch", "inches"),
    "yard": ("yd", "yard", "yards"),
    "kg": ("kg", "kgs", "kilogram", "kilograms", "kilo", "kilos"),
    "g": ("gram", "grams", "gr"),
    "mg": ("mg", "mgs", "milligram", "milligrams"),
    "mcg": ("mcg", "µg", "ug", "microgram", "micrograms"),
    "lb": ("lb", "lbs", "pound", "pounds"),
    "oz": ("oz", "ounce", "ounces"),
    "l": ("liter", "liters", "litre", "litres"),
    "ml": ("ml", "milliliter", "milliliters", "millilitre", "millilitres"),
    "cl": ("cl", "centiliter", "centiliters", "centilitre", "centilitres"),
    "dl": ("dl", "deciliter", "deciliters", "decilitre", "decilitres"),
    "gal": ("gal", "gallon", "gallons"),
    "cup": ("cup", "cups"),
    "tbsp": ("tbsp", "tablespoon", "tablespoons"),
    "tsp": ("tsp", "teaspoon", "teaspoons"),
    "celsius": ("°c", "celsius", "centigrade"),
    "fahrenheit": ("°f", "fahrenheit"),
    "usd": ("$", "usd", "dollar", "dollars", "bucks"),
    "eur": ("€", "eur", "euro", "euros"),
    "gbp": ("£", "gbp", "sterling", "quid"),
    "jpy": ("¥", "jpy", "yen"),
    "inr": ("₹", "inr", "rupee", "rupees", "rs"),
    "cny": ("cny", "rmb", "yuan"),
    "percent": ("%", "percent", "per cent", "pct"),
    "second": ("sec", "secs", "second", "seconds"),
    "minute": ("min", "mins", "minute", "minutes"),
    "hour": ("hr", "hrs", "hour", "hours"),
    "day": ("day", "days"),
    "week": ("week", "weeks"),
    "month": ("month", "months"),
    "year": ("yr", "yrs", "year", "years"),
    "kb": ("kb", "kilobyte", "kilobytes"),
    "mb": ("mb", "megabyte", "megabytes"),
    "gb": ("gb", "gigabyte", "gigabytes"),
    "tb": ("tb", "terabyte", "terabytes"),
    "mbps": ("mbps",),
    "gbps": ("gbps",),
    "mhz": ("mhz",),
    "ghz": ("ghz",),
    "watt": ("w", "watt", "watts"),
    "kw": ("kw",),
    "kwh": ("kwh",),
    "volt": ("v", "volt", "volts"),
    "mph": ("mph",),
    "kmh": ("kph", "kmh", "km/h"),
}
for _canonical, _spellings in _UNIT_GROUPS.items():
    for _spelling in _spellings:
        UNITS[_spelling] = _canonical

# Dimensions whose units are compared even without a number ("temperature in °C" vs "in °F"). Time units are
# left out: "hours", "days" are too common in ordinary wording to signal a different question.
UNIT_DIMENSIONS: dict[str, str] = {
    **dict.fromkeys(("km", "mile", "m", "cm", "mm", "ft", "inch", "yard"), "length"),
    **dict.fromkeys(("kg", "g", "mg", "mcg", "lb", "oz"), "mass"),
    **dict.fromkeys(("l", "ml", "cl", "dl", "gal", "cup", "tbsp", "tsp"), "volume"),
    **dict.fromkeys(("kb", "mb", "gb", "tb"), "data"),
    **dict.fromkeys(("celsius", "fahrenheit"), "temperature"),
    **dict.fromkeys(("usd", "eur", "gbp", "jpy", "inr", "cny"), "currency"),
    **dict.fromkeys(("mph", "kmh"), "speed"),
}

CURRENCY_SYMBOLS: dict[str, str] = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "₹": "inr"}

# Closed classes: members of one class are mutually exclusive answers to the same slot. If both texts name a
# member of a class and the sets differ, they ask about different things even when every other word matches.
_WEEKDAYS = _list(
    """
    monday tuesday wednesday thursday friday saturday sunday
    """
)
_MONTHS = _list(
    """
    january february march april may june july august september october november december
    """
)
_MONTH_ABBR = {
    "jan": "january", "feb": "february", "mar": "march", "apr": "april", "jun": "june", "jul": "july",
    "aug": "august", "sep": "september", "sept": "september", "oct": "october", "nov": "november",
    "dec": "december",
}  # fmt: skip
_LANGUAGES = _list(
    """
    english french german spanish italian portuguese dutch swedish norwegian danish finnish polish czech
    slovak hungarian romanian bulgarian greek turkish russian ukrainian arabic hebrew persian farsi
    hindi urdu bengali punjabi tamil telugu marathi gujarati chinese mandarin cantonese japanese korean
    vietnamese thai indonesian malay tagalog swahili latin
    """
)
CLOSED_CLASSES: dict[str, str] = {}
for _word in _WEEKDAYS:
    CLOSED_CLASSES[_word] = "weekday"
for _word in _MONTHS:
    CLOSED_CLASSES[_word] = "month"
for _word in _LANGUAGES:
    CLOSED_CLASSES[_word] = "language"
# "may" is a modal verb far more often than a month: only its capitalised form counts (see verify_text).
del CLOSED_CLASSES["may"]
MONTH_ABBREVIATIONS: dict[str, str] = _MONTH_ABBR
# Canonical member for spellings of one language.
LANGUAGE_ALIASES: dict[str, str] = {"farsi": "persian", "mandarin": "chinese"}

# Relative time ("today", "this week"): a cached answer about yesterday is not an answer about tomorrow.
TIME_WORDS: dict[str, str] = {
    "yesterday": "yesterday", "today": "today", "tonight": "today", "now": "today", "tomorrow": "tomorrow",
    "currently": "today", "weekend": "weekend", "weekends": "weekend",
}  # fmt: skip
# "<modifier> <period>" compounds: "this week", "next month", "last year".
TIME_MODIFIERS: frozenset[str] = frozenset({"this", "next", "last", "previous", "past", "coming"})
TIME_PERIODS: frozenset[str] = frozenset({"week", "month", "year", "weekend", "quarter", "decade", "season"})

# Near-synonyms common in questions and search queries, mapped to one representative so that a swap
# between them is not read as a change of topic. General thesaurus groups, not pair-specific.
_SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    # Superlatives of approval are one intent in a question ("best books", "good books", "top books").
    ("best", "top", "good", "great", "greatest", "finest", "nice", "decent", "excellent", "ideal", "optimal"),
    ("nearest", "closest", "nearby", "near", "close"),
    ("price", "cost", "pricing", "fee", "fees", "charge"),
    ("cheap", "inexpensive", "affordable", "budget", "low-cost"),
    ("photo", "image", "picture", "pic", "photograph"),
    ("movie", "film"),
    ("car", "automobile", "vehicle"),
    ("big", "large", "huge"),
    ("small", "little", "tiny"),
    ("fast", "quick", "quickly", "rapid", "rapidly", "speedy", "fastest", "quickest"),
    ("begin", "start", "starting", "beginning"),
    ("buy", "purchase"),
    ("job", "career", "work", "employment"),
    ("learn", "study"),
    ("difference", "differ", "different", "compare", "comparison", "versus"),
    ("meaning", "definition", "define", "mean"),
    ("example", "sample", "instance"),
    ("tutorial", "guide", "how-to", "walkthrough", "intro", "introduction"),
    ("tip", "advice", "suggestion", "recommendation", "recommend", "suggest"),
    ("error", "issue", "problem", "bug", "trouble"),
    ("fix", "solve", "resolve", "troubleshoot", "repair", "solution"),
    ("remove", "delete", "erase", "prune", "clear"),
    ("make", "create", "build", "generate"),
    ("choose", "pick", "select"),
    ("change", "modify", "alter"),
    ("convert", "turn", "transform"),
    ("count", "number"),
    ("version", "release"),
    ("happy", "glad", "joyful"),
    ("sad", "unhappy"),
    ("smart", "intelligent", "clever"),
    ("rich", "wealthy"),
    ("money", "cash"),
    ("city", "town"),
    ("country", "nation"),
    ("kid", "child", "children", "baby"),
    ("people", "persons", "person", "individuals"),
    ("woman", "lady", "ladies"),
    ("man", "guy", "gentleman"),
    ("doctor", "physician"),
    ("lawyer", "attorney"),
    ("shop", "store"),
    ("website", "site", "webpage"),
    ("app", "application"),
    ("phone", "smartphone", "cellphone", "mobile"),
    ("laptop", "notebook"),
    ("reset", "recover"),
    ("weight", "weigh"),
    ("lose", "reduce", "loss", "losing"),
    ("stop", "quit", "prevent", "avoid", "halt"),
    ("latest", "newest", "recent", "current", "currently", "now", "present", "presently", "nowadays"),
    ("answer", "reply", "response"),
    ("question", "query"),
    ("important", "significant"),
    ("famous", "popular", "well-known"),
    ("true", "correct", "right", "real", "proper", "appropriate", "suitable"),
    ("idea", "concept"),
    ("book", "reserve", "reservation", "booking"),
    ("hotel", "accommodation", "lodging"),
    ("restaurant", "eatery", "diner"),
    ("forecast", "weather"),
    ("news", "headline"),
    ("author", "writer", "wrote", "written"),
    ("because", "cause", "due", "reason"),
    ("handle", "deal", "manage", "cope", "tackle"),
    ("symptom", "sign"),
    ("middle", "center", "centre"),
    ("opinion", "think", "view", "thought"),
    ("tech", "technical", "technology"),
    ("forget", "forgot", "forgotten"),
    ("setup", "set", "install", "installation", "configure"),
    ("login", "signin"),
    ("easy", "simple", "easiest", "simplest"),
    ("hard", "difficult", "tough"),
    ("mistake", "wrong"),
    ("benefit", "advantage", "pro"),
)


def _synonym_index(groups: tuple[tuple[str, ...], ...]) -> dict[str, str]:
    index: dict[str, str] = {}
    for group in groups:
        for word in group:
            index.setdefault(word, group[0])
    return index


SYNONYMS: dict[str, str] = _synonym_index(_SYNONYM_GROUPS)

# Common abbreviations and their long forms, folded before comparing content words.
ABBREVIATIONS: dict[str, tuple[str, ...]] = {
    "us": ("united", "states"),
    "usa": ("united", "states"),
    "u.s.": ("united", "states"),
    "u.s.a.": ("united", "states"),
    "uk": ("united", "kingdom"),
    "u.k.": ("united", "kingdom"),
    "nyc": ("new", "york", "city"),
    "la": ("los", "angeles"),
    "sf": ("san", "francisco"),
    "js": ("javascript",),
    "ts": ("typescript",),
    "py": ("python",),
    "db": ("database",),
    "dbs": ("database",),
    "repo": ("repository",),
    "docs": ("documentation",),
    "doc": ("document",),
    "config": ("configuration",),
    "env": ("environment",),
    "k8s": ("kubernetes",),
    "ai": ("artificial", "intelligence"),
    "ml": ("machine", "learning"),
    "ui": ("user", "interface"),
    "os": ("operating", "system"),
    "er": ("emergency", "room"),
    "eli5": ("beginner",),
    "info": ("information",),
    "pic": ("picture",),
    "approx": ("approximately",),
    "govt": ("government",),
    "dept": ("department",),
    "univ": ("university",),
}
