"""In-car function calling, an automaker's voice assistant in English and Chinese: a built-in task.

    distill prepare configs/quickstart.yaml     # with a `prepare.vehicle` section

Each row is one utterance (plain, polite or indirect: "I'm cold", "车里好闷"; numbers in digits or
words: "twenty-two degrees", "二十二度", "half way") and its reference: one call to a function of
TOOLS with one to three arguments (difficulty = their number), as JSON {"name", "arguments"}, or
`[]` for chit-chat, questions about the car and requests no function serves (class no_call, one
row in seven). The other classes are the function names, taken in turn; languages alternate.

Eval asks two things, half its rows each (told apart by `source`): requests in wordings train never
uses (every (class, language) has eval-only templates: NEW_WORDING), and requests in train's wordings
with slot values held out of train (a fixed fifth of every train template's value combinations:
NEW_VALUES). Eval never repeats a train question or a TEACHER_CONTEXT example, whose examples come
from train templates and values. The same seed always gives the same rows, all distinct; the
templates hold about 2,300 train and 600 eval rows (more raise ValueError). SYSTEM_PROMPT and
TEACHER_CONTEXT (worked examples: eight written by hand, then EXAMPLE_POOL rows drawn from train
templates, from which generate.teacher_examples picks the ones most like each request) are meant
for the teacher's prompt only.
"""
from __future__ import annotations

import json
import random
import re
from typing import AbstractSet, Callable, NamedTuple


def _fn(name: str, properties: dict, optional: tuple[str, ...] = ()) -> dict:
    required = [p for p in properties if p not in optional]
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


def _enum(*values: str) -> dict:
    return {"type": "string", "enum": list(values)}


def _int(lo: int, hi: int) -> dict:
    return {"type": "integer", "minimum": lo, "maximum": hi}


# The student sees this list within a 1k-token context, so it stays under 2,500 characters: names
# and properties say what each function does (short descriptions would cost ~350 more), the sunroof is a
# window, and temperature is set or stepped by one function. Conventions are in SYSTEM_PROMPT.
TOOLS = [
    _fn("set_temperature", {"zone": _enum("driver", "passenger", "rear", "all"),
                            "celsius": {"type": "number", "minimum": 16, "maximum": 30},
                            "change": _enum("up", "down")}, optional=("celsius", "change")),
    _fn("set_fan_speed", {"level": _int(0, 7)}),
    _fn("set_window", {"window": _enum("driver", "passenger", "rear_left", "rear_right", "all", "sunroof"),
                       "open_percent": _int(0, 100)}),
    _fn("set_seat_climate", {"seat": _enum("driver", "passenger", "rear_left", "rear_right"),
                             "mode": _enum("heat", "vent"), "level": _int(0, 3)}),
    _fn("set_lights", {"light": _enum("ambient", "headlights", "reading"), "on": {"type": "boolean"},
                       "color": _enum("red", "blue", "green", "white", "purple", "orange")}, optional=("color",)),
    _fn("navigate_to", {"destination": {"type": "string"}, "avoid_tolls": {"type": "boolean"}},
        optional=("avoid_tolls",)),
    _fn("play_media", {"query": {"type": "string"}, "source": _enum("radio", "music", "podcast")}),
    _fn("set_volume", {"level": _int(0, 30)}),
    _fn("call_contact", {"name": {"type": "string"}}),
    _fn("set_drive_mode", {"mode": _enum("eco", "comfort", "sport")}),
    _fn("set_charge_limit", {"percent": _int(50, 100)}),
]
TOOLS_JSON = json.dumps(TOOLS)
FUNCTIONS = [t["function"]["name"] for t in TOOLS]
_PROPERTIES = {t["function"]["name"]: list(t["function"]["parameters"]["properties"]) for t in TOOLS}

SYSTEM_PROMPT = (
    "You are the car's voice assistant and control the car through the given functions. When a request "
    'needs a function, reply with only a JSON object {"name": ..., "arguments": {...}} and nothing else; '
    "otherwise answer briefly in the user's language. A zone nobody names is \"all\". \"A bit\" open is 20 "
    "percent; stuffy air means opening all windows a bit. Someone cold or hot means a temperature change up "
    "or down; color is for ambient light only; destinations, contacts and queries are copied as said.")

# ---------------------------------------------------------------------------------------------
# Slots: a template's {slot} is filled by a picker returning (argument value, how the user says it).

Picker = Callable[[random.Random, str], tuple[object, str]]

_EN_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen").split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ZH_DIGITS = "零一二三四五六七八九"


def words(n: int, lang: str) -> str:
    """0..100 in words: 22 -> "twenty-two" / "二十二"."""
    if lang == "zh":
        if n == 100:
            return "一百"
        tens, ones = divmod(n, 10)
        if tens == 0:
            return _ZH_DIGITS[ones]
        return (_ZH_DIGITS[tens] if tens > 1 else "") + "十" + (_ZH_DIGITS[ones] if ones else "")
    if n == 100:
        return "one hundred"
    if n < 20:
        return _EN_ONES[n]
    tens, ones = divmod(n, 10)
    return _EN_TENS[tens] + (f"-{_EN_ONES[ones]}" if ones else "")


def _choice(table: dict[object, tuple[list[str], list[str]]]) -> Picker:
    """An enum value, said in one of its (English, Chinese) phrasings."""
    def pick(rng: random.Random, lang: str) -> tuple[object, str]:
        value = rng.choice(list(table))
        return value, rng.choice(table[value][lang == "zh"])
    return pick


def _number(lo: int, hi: int) -> Picker:
    def pick(rng: random.Random, lang: str) -> tuple[object, str]:
        n = rng.randint(lo, hi)
        return n, rng.choice([str(n), words(n, lang)])
    return pick


def _percent(values: list[int], fractions: dict[int, tuple[list[str], list[str]]]) -> Picker:
    """A percent as "30 percent", "thirty percent", "30%", "百分之三十", "三成", or a fraction ("half way")."""
    def pick(rng: random.Random, lang: str) -> tuple[object, str]:
        n = rng.choice(values)
        if lang == "en":
            said = [f"{n} percent", f"{n}%", f"{words(n, 'en')} percent"]
        else:
            said = [f"百分之{words(n, 'zh')}", f"{n}%"] + ([f"{words(n // 10, 'zh')}成"] if n % 10 == 0 and n < 100 else [])
        return n, rng.choice(said + fractions.get(n, ([], []))[lang == "zh"])
    return pick


def _verbatim(en: list[str], zh: list[str]) -> Picker:
    """Free text that goes into the call exactly as said (destination, contact, media query)."""
    def pick(rng: random.Random, lang: str) -> tuple[object, str]:
        text = rng.choice(en if lang == "en" else zh)
        return text, text
    return pick


# slot -> (argument it fills, or None for no_call fillers; picker)
SLOTS: dict[str, tuple[str | None, Picker]] = {
    "zone": ("zone", _choice({
        "driver": (["the driver's side", "the driver", "the front left"], ["主驾", "驾驶位", "司机这边"]),
        "passenger": (["the passenger side", "the front passenger", "the co-driver"], ["副驾", "副驾驶", "乘客那边"]),
        "rear": (["the back seats", "the rear", "the back row"], ["后排", "后座"]),
        "all": (["everyone", "the whole car", "all zones"], ["全车", "所有座位", "前后排"])})),
    "celsius": ("celsius", _number(16, 30)),
    "fan": ("level", _number(0, 7)),
    "window": ("window", _choice({
        "driver": (["driver's window", "front left window"], ["主驾车窗", "左前车窗"]),
        "passenger": (["passenger window", "front right window"], ["副驾车窗", "右前车窗"]),
        "rear_left": (["rear left window", "back left window"], ["左后车窗", "后排左侧车窗"]),
        "rear_right": (["rear right window", "back right window"], ["右后车窗", "后排右侧车窗"]),
        "all": (["windows"], ["所有车窗", "全部车窗"])})),
    "opening": ("open_percent", _percent([10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90], {
        25: (["a quarter of the way"], ["四分之一"]), 50: (["half way", "halfway"], ["一半"]),
        75: (["three quarters of the way"], ["四分之三"])})),
    "seat": ("seat", _choice({
        "driver": (["the driver's seat", "the front left seat"], ["主驾座椅", "驾驶座"]),
        "passenger": (["the passenger seat", "the front right seat"], ["副驾座椅", "副驾驶座"]),
        "rear_left": (["the rear left seat", "the back left seat"], ["左后座椅", "后排左边座椅"]),
        "rear_right": (["the rear right seat", "the back right seat"], ["右后座椅", "后排右边座椅"])})),
    "seat_level": ("level", _number(1, 3)),  # level 0 has its own "turn off" wordings
    "light": ("light", _choice({
        "ambient": (["ambient light", "mood lighting", "accent lights"], ["氛围灯", "车内氛围灯"]),
        "headlights": (["headlights", "head lamps", "front lights"], ["大灯", "前大灯", "车头灯"]),
        "reading": (["reading light", "map light", "dome light"], ["阅读灯", "顶灯", "读书灯"])})),
    "color": ("color", _choice({
        "red": (["red"], ["红色"]), "blue": (["blue"], ["蓝色"]), "green": (["green"], ["绿色"]),
        "white": (["white"], ["白色"]), "purple": (["purple"], ["紫色"]), "orange": (["orange"], ["橙色"])})),
    # Many values, each said rarely: a student that copies from the request does well, one that
    # memorizes the values it saw does not.
    "destination": ("destination", _verbatim(
        ["Central Station", "Union Square", "Stanford University", "Golden Gate Park", "Pier 39", "Lakeside Mall",
         "City Hospital", "Riverside Park", "Oakland Airport", "Maple Street", "Harbor Bridge", "Grand Hotel",
         "Pine Valley", "the public library", "Ocean Beach", "Sunset Boulevard", "Tech Park", "Westfield Mall",
         "the city museum", "Lincoln High School", "Greenwood Cemetery", "Elm Avenue", "the football stadium",
         "Cedar Lake", "the nearest gas station", "Mission Bay", "Fisherman's Wharf", "Chinatown", "the zoo",
         "North Beach", "Santa Cruz", "Berkeley Marina", "the convention center", "Oak Street 12", "Palo Alto",
         "the train museum", "Twin Peaks", "Highland Hospital", "Sausalito", "the ferry terminal"],
        ["首都机场", "上海虹桥站", "西湖", "天安门广场", "中关村", "人民医院", "陆家嘴", "环球影城", "南京路步行街",
         "奥林匹克公园", "外滩", "颐和园", "故宫", "三里屯", "望京", "浦东机场", "北京南站", "鼓楼", "国贸",
         "五道口", "中山公园", "人民广场", "徐家汇", "世纪公园", "动物园", "西单", "王府井", "朝阳公园",
         "科技园", "市图书馆", "体育中心", "火车东站", "滨江公园", "大学城", "市政府", "会展中心", "老城区",
         "迪士尼乐园", "最近的加油站", "儿童医院"])),
    "artist": ("query", _verbatim(
        ["Taylor Swift", "Coldplay", "Miles Davis", "Adele", "Daft Punk", "Beethoven", "Queen", "Norah Jones",
         "Ed Sheeran", "Billie Eilish", "The Beatles", "Mozart", "Bob Dylan", "Beyonce", "Radiohead", "ABBA",
         "Drake", "Bruno Mars", "Elton John", "Nirvana", "Dua Lipa", "Bach", "Frank Sinatra", "Rihanna",
         "U2", "Pink Floyd", "Shakira", "Eminem", "Lady Gaga", "John Coltrane"],
        ["周杰伦", "邓紫棋", "王菲", "陈奕迅", "五月天", "林俊杰", "李健", "许嵩", "孙燕姿", "张学友", "刘德华",
         "蔡依林", "薛之谦", "毛不易", "朴树", "李宗盛", "邓丽君", "张惠妹", "汪峰", "赵雷", "郭顶", "田馥甄",
         "周深", "王力宏", "莫文蔚", "梁静茹", "张杰", "华晨宇", "李荣浩", "那英"])),
    "podcast": ("query", _verbatim(
        ["The Daily", "Radiolab", "Freakonomics", "Hard Fork", "Planet Money", "Serial", "Huberman Lab",
         "99% Invisible", "This American Life", "Lex Fridman", "Stuff You Should Know", "Reply All",
         "Hidden Brain", "TED Radio Hour", "Invisibilia", "Acquired", "The Moth", "Science Vs", "Making Sense",
         "Pod Save America"],
        ["忽左忽右", "随机波动", "故事FM", "日谈公园", "声东击西", "不合时宜", "文化有限", "大内密谈", "看理想",
         "商业就是这样", "三五环", "知行小酒馆", "半拿铁", "无人知晓", "岩中花述", "跳岛FM", "井户端会议",
         "东腔西调", "得意忘形", "翻转电台"])),
    "station": ("query", _verbatim(
        ["NPR", "BBC World Service", "KQED", "Jazz FM", "Classic FM", "BBC Radio 2", "WNYC", "Capital FM",
         "KEXP", "Radio 4", "Heart FM", "KCRW", "Absolute Radio", "Magic FM", "WQXR", "Smooth Radio",
         "Radio X", "Kiss FM", "LBC", "Virgin Radio"],
        ["中国之声", "交通广播", "音乐之声", "经济之声", "新闻广播", "都市之声", "文艺广播", "中国乡村之声",
         "故事广播", "体育广播", "城市之声", "怀旧金曲", "国际广播", "华夏之声", "民族之声", "经典音乐广播",
         "轻松调频", "动感101", "欢乐调频", "老年之声"])),
    "volume": ("level", _number(0, 30)),
    "name": ("name", _verbatim(
        ["Mom", "Dad", "Alex", "Sarah Miller", "Dr. Patel", "David Chen", "Grandma", "Emily", "Jake", "Priya",
         "Uncle Joe", "Maria Lopez", "Tom", "Jessica", "Grandpa", "Kevin Wu", "Aunt Linda", "Olivia", "Sam",
         "Mr. Johnson", "Hannah", "Carlos", "Dr. Kim", "Rachel Green", "Ben", "Sophie", "Coach Taylor",
         "Michael Brown", "Nina", "Omar", "Laura", "Chris", "Ms. Garcia", "Ethan", "Zoe", "Daniel Park",
         "Lily", "Mark", "Isabella", "Ryan"],
        ["妈妈", "爸爸", "老王", "张伟", "李经理", "王阿姨", "小刘", "陈医生", "老婆", "刘总", "小美", "赵老师",
         "爷爷", "奶奶", "外婆", "姐姐", "哥哥", "弟弟", "妹妹", "老公", "孙老师", "周经理", "吴医生", "小张",
         "老李", "杨总", "黄阿姨", "林叔叔", "郑秘书", "小陈", "马师傅", "何律师", "高主任", "徐老师", "小杨",
         "钱总", "宋医生", "韩经理", "小赵", "冯阿姨"])),
    "mode": ("mode", _choice({"eco": (["eco", "economy", "energy saving"], ["经济", "节能", "省电"]),
                              "comfort": (["comfort", "comfortable"], ["舒适", "舒适型"]),
                              "sport": (["sport", "sports", "sporty"], ["运动", "动感"])})),
    "charge": ("percent", _percent(list(range(50, 101, 5)), {})),
    "battery": (None, _percent(list(range(10, 101, 10)), {})),
    "topic": (None, _verbatim(["cars", "cats", "coffee", "traffic", "robots", "dentists", "pizza", "penguins", "math"],
                              ["汽车", "猫", "程序员", "堵车", "老师", "咖啡", "熊猫", "数学", "加班"])),
    "city": (None, _verbatim(["Boston", "Seattle", "London", "Tokyo", "Berlin", "Paris", "Denver", "Toronto"],
                             ["北京", "上海", "杭州", "成都", "深圳", "广州", "西安", "武汉"])),
    "warning": (None, _verbatim(["tire pressure", "check engine", "battery", "brake", "airbag", "coolant"],
                                ["胎压", "发动机", "电池", "刹车", "安全气囊", "冷却液"])),
}
_FIELD = re.compile(r"\{(\w+)\}")

# ---------------------------------------------------------------------------------------------
# Templates: class -> language -> (train-only, eval-only); an entry is a pattern, or a pattern and
# arguments the wording fixes ("close ..." -> open_percent 0).

TEMPLATES: dict[str, dict[str, tuple[list, list]]] = {
    "set_temperature": {
        "en": (["set {zone} to {celsius} degrees", "could you please make it {celsius} degrees for {zone}?",
                "I'd like {celsius} degrees for {zone}", ("set the temperature to {celsius} degrees", {"zone": "all"}),
                ("I'm cold", {"zone": "all", "change": "up"}),
                ("it's too hot in here", {"zone": "all", "change": "down"}),
                ("make {zone} a little warmer", {"change": "up"}), ("could you cool down {zone}?", {"change": "down"}),
                ("turn up the heat for {zone}", {"change": "up"})],
               ["change the temperature for {zone} to {celsius} degrees, thanks",
                "please adjust the climate for {zone}: {celsius} degrees",
                ("can you set the AC to {celsius} degrees?", {"zone": "all"}),
                ("I'm freezing", {"zone": "all", "change": "up"}),
                ("it's boiling in this car", {"zone": "all", "change": "down"}),
                ("please make it warmer for {zone}", {"change": "up"}),
                ("can you make it cooler for {zone}?", {"change": "down"})]),
        "zh": (["{zone}温度设成{celsius}度", "麻烦把{zone}的空调调到{celsius}度", "请将{zone}温度设置为{celsius}度",
                ("把温度调到{celsius}度", {"zone": "all"}), ("我有点冷", {"zone": "all", "change": "up"}),
                ("车里太热了", {"zone": "all", "change": "down"}), ("{zone}温度调高一点", {"change": "up"}),
                ("把{zone}调凉快些", {"change": "down"}), ("麻烦让{zone}暖和一点", {"change": "up"})],
               ["帮我把{zone}调成{celsius}度吧", "{zone}要{celsius}度，谢谢", ("空调开到{celsius}度", {"zone": "all"}),
                ("好冷啊", {"zone": "all", "change": "up"}), ("热死了", {"zone": "all", "change": "down"}),
                ("{zone}再升高点温度", {"change": "up"}), ("{zone}降降温吧", {"change": "down"})]),
    },
    "set_fan_speed": {
        "en": (["set the fan speed to {fan}", "fan to level {fan}, please", "could you turn the blower to {fan}?",
                ("turn off the fan", {"level": 0}), ("max out the fan", {"level": 7})],
               ["change the fan to {fan}", "please put the air flow at level {fan}",
                ("shut the fan off", {"level": 0})]),
        "zh": (["风量调到{fan}档", "把风扇开到{fan}档", "请把风速设为{fan}级", ("关掉风扇", {"level": 0}),
                ("风量开到最大", {"level": 7})],
               ["风速调成{fan}档吧", "麻烦把鼓风机调到{fan}档", ("把风关了", {"level": 0})]),
    },
    "set_window": {
        "en": (["open the {window} {opening}", "roll the {window} down {opening}",
                ("open the {window}", {"open_percent": 100}), ("close the {window}", {"open_percent": 0}),
                ("crack the {window} open a bit", {"open_percent": 20}),
                ("it's stuffy in here", {"window": "all", "open_percent": 20}),
                ("open the sunroof", {"window": "sunroof", "open_percent": 100}),
                ("close the sunroof", {"window": "sunroof", "open_percent": 0}),
                ("could you please slide the sunroof open {opening}?", {"window": "sunroof"})],
               ["could you lower the {window} {opening}?", ("please shut the {window}", {"open_percent": 0}),
                ("the air in here feels stale", {"window": "all", "open_percent": 20}),
                ("I'd like the sunroof open {opening}", {"window": "sunroof"}),
                ("shut the moonroof", {"window": "sunroof", "open_percent": 0})]),
        "zh": (["把{window}打开{opening}", "{window}开到{opening}", ("打开{window}", {"open_percent": 100}),
                ("关上{window}", {"open_percent": 0}), ("把{window}开一点", {"open_percent": 20}),
                ("车里好闷", {"window": "all", "open_percent": 20}),
                ("打开天窗", {"window": "sunroof", "open_percent": 100}),
                ("关闭天窗", {"window": "sunroof", "open_percent": 0}), ("天窗开到{opening}", {"window": "sunroof"})],
               ["麻烦把{window}降下{opening}", ("请关闭{window}", {"open_percent": 0}),
                ("空气有点不流通", {"window": "all", "open_percent": 20}),
                ("帮我把天窗开{opening}", {"window": "sunroof"}), ("天窗关上吧", {"window": "sunroof", "open_percent": 0})]),
    },
    "set_seat_climate": {
        "en": ([("turn on the seat heating for {seat} at level {seat_level}", {"mode": "heat"}),
                ("set {seat} heater to {seat_level}", {"mode": "heat"}),
                ("could you please ventilate {seat} at level {seat_level}?", {"mode": "vent"}),
                ("seat cooling for {seat}, level {seat_level}", {"mode": "vent"}),
                ("turn off the seat heating for {seat}", {"mode": "heat", "level": 0}),
                ("max out the ventilation on {seat}", {"mode": "vent", "level": 3})],
               [("warm up {seat}, level {seat_level} please", {"mode": "heat"}),
                ("I'd like {seat} ventilated on level {seat_level}", {"mode": "vent"}),
                ("switch off the seat cooling on {seat}", {"mode": "vent", "level": 0})]),
        "zh": ([("打开{seat}加热{seat_level}档", {"mode": "heat"}), ("{seat}加热调到{seat_level}档", {"mode": "heat"}),
                ("把{seat}通风开到{seat_level}档", {"mode": "vent"}),
                ("请将{seat}的通风设为{seat_level}档", {"mode": "vent"}),
                ("关闭{seat}加热", {"mode": "heat", "level": 0}), ("{seat}通风开到最大", {"mode": "vent", "level": 3})],
               [("帮我把{seat}加热开{seat_level}档", {"mode": "heat"}), ("{seat}通风{seat_level}档，谢谢", {"mode": "vent"}),
                ("把{seat}的通风关掉", {"mode": "vent", "level": 0})]),
    },
    "set_lights": {
        "en": ([("turn on the {light}", {"on": True}), ("switch off the {light}", {"on": False}),
                ("set the ambient light to {color}", {"light": "ambient", "on": True}),
                ("could you please make the mood lighting {color}?", {"light": "ambient", "on": True}),
                ("I need to read something", {"light": "reading", "on": True}),
                ("can you turn the {light} on?", {"on": True}), ("I don't need the {light} anymore", {"on": False})],
               [("please switch the {light} on", {"on": True}), ("kill the {light}", {"on": False}),
                ("{light} off, please", {"on": False}),
                ("change the ambient lighting to {color}", {"light": "ambient", "on": True}),
                ("it's too dark to read in here", {"light": "reading", "on": True})]),
        "zh": ([("打开{light}", {"on": True}), ("关掉{light}", {"on": False}),
                ("氛围灯调成{color}", {"light": "ambient", "on": True}),
                ("麻烦把氛围灯换成{color}", {"light": "ambient", "on": True}),
                ("我想看会儿书", {"light": "reading", "on": True}), ("请把{light}打开", {"on": True}),
                ("{light}关一下", {"on": False})],
               [("请开启{light}", {"on": True}), ("把{light}关了", {"on": False}), ("开一下{light}", {"on": True}),
                ("氛围灯改成{color}吧", {"light": "ambient", "on": True}),
                ("太暗了看不清字", {"light": "reading", "on": True})]),
    },
    "navigate_to": {
        "en": (["navigate to {destination}", "take me to {destination}",
                "could you please get directions to {destination}?",
                ("drive me to {destination}, avoiding tolls", {"avoid_tolls": True}),
                ("navigate to {destination} with no toll roads", {"avoid_tolls": True})],
               ["I need to get to {destination}", "let's go to {destination}",
                ("find a route to {destination} that avoids tolls", {"avoid_tolls": True})]),
        "zh": (["导航到{destination}", "带我去{destination}", "麻烦帮我导航去{destination}",
                ("去{destination}，避开收费站", {"avoid_tolls": True}),
                ("导航到{destination}，不走收费路", {"avoid_tolls": True})],
               ["我要去{destination}", "开车去{destination}吧", ("去{destination}，不要走收费的路", {"avoid_tolls": True})]),
    },
    "play_media": {
        "en": ([("play music by {artist}", {"source": "music"}), ("put on some {artist}", {"source": "music"}),
                ("play the {podcast} podcast", {"source": "podcast"}),
                ("tune the radio to {station}", {"source": "radio"}),
                ("could you please put on the {podcast} podcast?", {"source": "podcast"})],
               [("I want to listen to {artist}", {"source": "music"}),
                ("play the latest episode of {podcast}", {"source": "podcast"}),
                ("can you find {station} on the radio?", {"source": "radio"})]),
        "zh": ([("播放{artist}的歌", {"source": "music"}), ("来点{artist}的音乐", {"source": "music"}),
                ("我想听播客{podcast}", {"source": "podcast"}), ("打开电台{station}", {"source": "radio"}),
                ("麻烦放一期{podcast}", {"source": "podcast"})],
               [("放几首{artist}的歌吧", {"source": "music"}), ("播一下{podcast}这档播客", {"source": "podcast"}),
                ("切到{station}电台", {"source": "radio"})]),
    },
    "set_volume": {
        "en": (["set the volume to {volume}", "volume {volume}, please", "could you turn the volume to {volume}?",
                ("mute the audio", {"level": 0})],
               ["change the volume level to {volume}", "I'd like the volume at {volume}",
                ("silence the speakers", {"level": 0})]),
        "zh": (["音量调到{volume}", "把音量设为{volume}", "麻烦把声音调到{volume}", ("静音", {"level": 0})],
               ["声音开到{volume}吧", "音量{volume}", ("把声音关掉", {"level": 0})]),
    },
    "call_contact": {
        "en": (["call {name}", "phone {name}", "could you please dial {name}?", "give {name} a ring"],
               ["ring {name} for me", "I need to talk to {name}", "get {name} on the phone"]),
        "zh": (["给{name}打电话", "打给{name}", "呼叫{name}", "麻烦拨打{name}的电话"],
               ["帮我联系一下{name}", "给{name}打个电话吧", "我要和{name}通话"]),
    },
    "set_drive_mode": {
        "en": (["switch to {mode} mode", "drive mode {mode}", "could you please put it in {mode} mode?",
                "put the car in {mode} mode", "I want {mode} mode", ("I want to save battery", {"mode": "eco"}),
                ("let's have some fun on this road", {"mode": "sport"}), ("I'm in a hurry", {"mode": "sport"})],
               ["change the driving mode to {mode}", "set {mode} mode, please", "can you enable {mode} mode?",
                ("I'd like a smoother ride", {"mode": "comfort"}), ("this road feels so bumpy", {"mode": "comfort"})]),
        "zh": (["切换到{mode}模式", "驾驶模式改成{mode}", "麻烦开{mode}模式", "把车调成{mode}模式", "我要{mode}模式",
                ("我想省点电", {"mode": "eco"}), ("来点推背感", {"mode": "sport"}), ("我赶时间", {"mode": "sport"})],
               ["换成{mode}模式吧", "请用{mode}模式", "开启{mode}模式", ("开得舒服点", {"mode": "comfort"}),
                ("这路太颠了", {"mode": "comfort"})]),
    },
    "set_charge_limit": {
        "en": (["set the charge limit to {charge}", "charge to {charge}",
                "could you please limit charging to {charge}?",
                ("charge the battery to full", {"percent": 100})],
               ["stop charging at {charge}", "I only want to charge up to {charge}",
                ("fill the battery all the way", {"percent": 100})]),
        "zh": (["充电上限设为{charge}", "充到{charge}", "麻烦把充电限制调到{charge}", ("充满电", {"percent": 100})],
               ["充电到{charge}就停", "最多充到{charge}", ("把电充满吧", {"percent": 100})]),
    },
    # No function applies: chit-chat, questions about the car, and requests the car cannot do.
    "no_call": {
        "en": (["how far can I drive on a full charge?", "how far can I go with {battery} battery left?",
                "tell me a joke about {topic}", "what's the weather like in {city} today?", "hello",
                "what does the {warning} warning light mean?", "thanks, that's all", "what's your name?",
                "open the trunk"],
               ["what's the range on a full battery?", "is it going to rain in {city} tomorrow?",
                "know any good jokes about {topic}?", "why is the {warning} light on?", "hi, how are you?",
                "how long does it take to charge to {battery}?", "turn on the wipers"]),
        "zh": (["充满电能跑多远？", "还剩{battery}的电能开多远？", "讲个关于{topic}的笑话", "{city}今天天气怎么样？",
                "你好", "{warning}故障灯亮了是什么意思？", "谢谢，没事了", "你叫什么名字？", "打开后备箱"],
               ["满电续航是多少？", "{city}明天会下雨吗？", "说个{topic}的笑话吧", "为什么{warning}警示灯亮了？",
                "嗨，你好吗？", "充到{battery}要多久？", "打开雨刷"]),
    },
}

# Wake phrases multiply the wordings of short commands ("close the sunroof") without new intents.
_WAKE = {"en": ["", "", "hey car, ", "ok car, ", "hi car, "], "zh": ["", "", "小车小车，", "嘿，小车，", "你好小车，"]}

# Worked examples for the teacher's prompt only, all from train templates and values not held out
# (eval never shows them).
_EXAMPLES = [
    ("Set the passenger side to twenty-one degrees", {"name": "set_temperature", "arguments": {
        "zone": "passenger", "celsius": 21}}),
    ("我有点冷", {"name": "set_temperature", "arguments": {"zone": "all", "change": "up"}}),
    ("It's stuffy in here", {"name": "set_window", "arguments": {"window": "all", "open_percent": 20}}),
    ("把副驾座椅通风开到二档", {"name": "set_seat_climate", "arguments": {
        "seat": "passenger", "mode": "vent", "level": 2}}),
    ("Play the Freakonomics podcast", {"name": "play_media", "arguments": {
        "query": "Freakonomics", "source": "podcast"}}),
    ("去西湖，避开收费站", {"name": "navigate_to", "arguments": {"destination": "西湖", "avoid_tolls": True}}),
    ("Tell me a joke about coffee", "Why did the coffee file a police report? It got mugged."),
    ("充满电能跑多远？", "续航取决于车况和驾驶习惯，仪表盘上会显示当前的预计续航里程。"),
]
LANGUAGES = ("en", "zh")
NO_CALL_EVERY = 7  # rows 6, 13, 20, ... are no_call
_TRIES = 1000  # fresh wordings sought per row before giving up
# Worked examples drawn from train templates: a 135M teacher shown the four most like the request
# made the exact call on 69% of train requests (greedy), against 22% with a fixed dozen and 0%
# with the tools alone (measured on 120 requests).
EXAMPLE_POOL, EXAMPLE_SEED = 240, 7
HELD_OUT = 0.2  # of each train template's value combinations, for eval: enough for 600 eval rows
# What a no_call example answers: the teacher learns to decline briefly in the user's language.
_DECLINE = {"en": "I can't do that with the car's controls, but I'm happy to help with something else.",
            "zh": "这个我用车上的功能做不到，还有什么可以帮您？"}


def templates(cls: str, lang: str, split: str) -> list[tuple[str, dict]]:
    """(pattern, fixed arguments) of one class, language and split; the pattern names the template."""
    return [(t, {}) if isinstance(t, str) else t for t in TEMPLATES[cls][lang][split == "eval"]]


def render(pattern: str, fixed: dict, lang: str, rng: random.Random) -> tuple[str, dict, dict]:
    """Fill a template's slots: (question, arguments, the value picked for each slot)."""
    args, said, values = dict(fixed), {}, {}
    for slot in _FIELD.findall(pattern):
        arg, pick = SLOTS[slot]
        values[slot], said[slot] = pick(rng, lang)
        if arg is not None:
            args[arg] = values[slot]
    text = rng.choice(_WAKE[lang]) + pattern.format(**said)
    return text[0].upper() + text[1:], args, values


def _class(i: int) -> str:
    if i % NO_CALL_EVERY == NO_CALL_EVERY - 1:
        return "no_call"
    return FUNCTIONS[(i - i // NO_CALL_EVERY) % len(FUNCTIONS)]  # functions in turn over the other rows


class Drawn(NamedTuple):
    combination: tuple  # (pattern, slot values): what a request means, whatever its wake phrase or number words
    row: dict

    @property
    def pattern(self) -> str:
        return self.combination[0]


def held_out(combination: tuple) -> bool:
    """Whether a (pattern, slot values) combination is kept for eval's NEW_VALUES half: a fixed share
    HELD_OUT of every train template's combinations, the same for every seed and n_train."""
    return bool(combination[1]) and random.Random(repr(combination)).random() < HELD_OUT


def generate(n: int, split: str, seed: int, exclude: AbstractSet[str] = frozenset(),
             keep: Callable[[tuple], bool] = lambda combination: True) -> list[Drawn]:
    """`n` distinct rows from `split`'s templates, none a question in `exclude`, each a combination
    `keep` accepts."""
    rng = random.Random(seed)
    seen = set(exclude)
    out = []
    for i in range(n):
        lang, cls = LANGUAGES[i % 2], _class(i)
        options = templates(cls, lang, split)
        for _ in range(_TRIES):
            pattern, fixed = rng.choice(options)
            question, args, values = render(pattern, fixed, lang, rng)
            combination = (pattern, tuple(sorted(values.items())))
            if question not in seen and keep(combination):
                break
        else:
            raise ValueError(f"vehicle: no new {split} wording for {cls} ({lang}) after {_TRIES} tries; "
                             f"ask for fewer rows")
        seen.add(question)
        # Arguments in schema order, so every reference of a function reads the same way.
        call = [] if cls == "no_call" else {"name": cls, "arguments": {
            k: args[k] for k in _PROPERTIES[cls] if k in args}}
        out.append(Drawn(combination, {
            "id": f"vehicle-{'eval-' if split == 'eval' else ''}{seed}-{i}", "question": question,
            "reference": json.dumps(call, ensure_ascii=False), "tools": TOOLS_JSON, "language": lang, "class": cls,
            "difficulty": len(args)}))
    return out


def worked_examples() -> list[dict]:
    """TEACHER_CONTEXT: the hand-written examples, then the EXAMPLE_POOL rows of train templates, as
    user/assistant messages (a call as its JSON, a no_call row as a brief refusal)."""
    pairs = list(_EXAMPLES)
    for _, row in _POOL:
        call = json.loads(row["reference"])
        pairs.append((row["question"], call or _DECLINE[row["language"]]))
    return [m for question, answer in pairs for m in (
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)})]


def _trained(combination: tuple) -> bool:
    return not held_out(combination)


_POOL = generate(EXAMPLE_POOL, "train", EXAMPLE_SEED, exclude={q for q, _ in _EXAMPLES}, keep=_trained)
TEACHER_CONTEXT = worked_examples()
# The eval split's two halves, by `source`: how a student does on wordings it never saw, and on the
# wordings it trained on with slot values they never carried there.
NEW_WORDING, NEW_VALUES = "vehicle/new-wording", "vehicle/new-values"


def splits(n_train: int, n_eval: int, seed: int) -> dict[str, list[dict]]:
    """Train rows, and eval rows of two kinds: half (NEW_WORDING) from eval-only templates, half
    (NEW_VALUES) from train templates with slot values held out of train and the worked examples.
    Eval repeats no train or teacher question."""
    train = [dict(d.row, source="vehicle") for d in generate(n_train, "train", seed, keep=_trained)]
    taken = {r["question"] for r in train} | {m["content"] for m in TEACHER_CONTEXT if m["role"] == "user"}
    new_wording = [d.row for d in generate(n_eval - n_eval // 2, "eval", seed + 1_000_003, exclude=taken)]
    new_values = [d.row for d in generate(n_eval // 2, "train", seed + 2_000_003, exclude=taken, keep=held_out)]
    return {"train": train, "eval": [dict(r, source=NEW_WORDING) for r in new_wording]
            + [dict(r, id=r["id"].replace("vehicle-", "vehicle-eval-"), source=NEW_VALUES) for r in new_values]}
