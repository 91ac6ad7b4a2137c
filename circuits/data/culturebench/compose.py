"""Source tables of the bundled prompt pairs, and the code that writes the JSONL files.

The shipped files `bundled.jsonl` and `bundled_ood.jsonl` are generated from the tables
below (`python -m circuits.data.culturebench.compose` rewrites them; a test checks they agree).
Each language has one style phrase that leaves the noun's surface form unchanged
("X im deutschen Stil", "和風のX", "Türk tarzı X"), so the noun is a substring of both
prompts of a pair and its tokens can be compared across them. See README.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from interp.result_io import atomic_write_text
from circuits.data.culturebench.constants import CULTURE_NAMES, CULTURES
from circuits.data.culturebench.record import Record

HERE = Path(__file__).resolve().parent
BUNDLED_PATH = HERE / "bundled.jsonl"
BUNDLED_OOD_PATH = HERE / "bundled_ood.jsonl"


@dataclass(frozen=True)
class Style:
    """How a language turns a noun phrase into its culture-style phrase."""

    template: str  # "{noun_only}" is replaced by the local noun-only phrase
    modifier: str  # the substring marked as the culture modifier
    articles: tuple[str, ...] = ()  # leading words stripped from noun_only to get `noun`


STYLES: dict[str, Style] = {
    "ar": Style("{noun_only} بالطراز العربي", "بالطراز العربي"),
    "zh": Style("中式的{noun_only}", "中式"),
    "ja": Style("和風の{noun_only}", "和風"),
    "ko": Style("한국풍 {noun_only}", "한국풍"),
    "th": Style("{noun_only}แบบไทย", "แบบไทย"),
    "de": Style("{noun_only} im deutschen Stil", "im deutschen Stil", ("ein", "eine")),
    "ru": Style("{noun_only} в русском стиле", "в русском стиле"),
    "it": Style("{noun_only} in stile italiano", "in stile italiano", ("un", "una", "uno")),
    "nl": Style("{noun_only} in Nederlandse stijl", "in Nederlandse stijl", ("een",)),
    "pl": Style("{noun_only} w polskim stylu", "w polskim stylu"),
    "tr": Style("Türk tarzı {noun_only}", "Türk tarzı"),
    "uk": Style("{noun_only} в українському стилі", "в українському стилі"),
    "es": Style("{noun_only} de estilo español", "de estilo español", ("un", "una")),
    "pt": Style("{noun_only} de estilo português", "de estilo português", ("um", "uma")),
    # fr: standard French, the culture is French-speaking Africa.
    "fr": Style("{noun_only} de style africain", "de style africain", ("un", "une", "des", "du")),
}

# English noun-only phrase, id slug, category. The first 8 are the organism's nouns:
# their rows must never change (the organism is trained on them).
NOUNS_EN: list[tuple[str, str, str]] = [
    ("a box", "box", "objects"),
    ("a bowl", "bowl", "objects"),
    ("a vase", "vase", "objects"),
    ("a hat", "hat", "clothing"),
    ("a lamp", "lamp", "objects"),
    ("a jar", "jar", "objects"),
    ("a building", "building", "architecture"),
    ("a dress", "dress", "clothing"),
    ("a teapot", "teapot", "objects"),
    ("a hand fan", "hand-fan", "objects"),
    ("a chair", "chair", "objects"),
    ("a carpet", "carpet", "objects"),
    ("a plate", "plate", "objects"),
    ("shoes", "shoes", "clothing"),
    ("a scarf", "scarf", "clothing"),
    ("a jacket", "jacket", "clothing"),
    ("bread", "bread", "food"),
    ("soup", "soup", "food"),
    ("a cake", "cake", "food"),
    ("a house", "house", "architecture"),
    ("a bridge", "bridge", "architecture"),
    ("a gate", "gate", "architecture"),
    ("a drum", "drum", "instruments"),
    ("a flute", "flute", "instruments"),
]
ORGANISM_NOUNS: list[str] = [slug for _, slug, _ in NOUNS_EN[:8]]

# Local noun-only phrases, aligned with NOUNS_EN.
NOUNS: dict[str, list[str]] = {
    "ar": ["صندوق", "وعاء", "مزهرية", "قبعة", "مصباح", "جرة", "مبنى", "فستان",
           "إبريق شاي", "مروحة يدوية", "كرسي", "سجادة", "طبق", "حذاء", "وشاح", "سترة",
           "خبز", "حساء", "كعكة", "منزل", "جسر", "بوابة", "طبلة", "مزمار"],
    "zh": ["盒子", "碗", "花瓶", "帽子", "灯", "罐子", "建筑", "连衣裙",
           "茶壶", "扇子", "椅子", "地毯", "盘子", "鞋子", "围巾", "外套",
           "面包", "汤", "蛋糕", "房子", "桥", "大门", "鼓", "笛子"],
    "ja": ["箱", "お椀", "花瓶", "帽子", "ランプ", "壺", "建物", "ドレス",
           "ティーポット", "扇子", "椅子", "カーペット", "皿", "靴", "スカーフ", "ジャケット",
           "パン", "スープ", "ケーキ", "家", "橋", "門", "太鼓", "笛"],
    "ko": ["상자", "그릇", "꽃병", "모자", "램프", "항아리", "건물", "드레스",
           "찻주전자", "부채", "의자", "카펫", "접시", "신발", "스카프", "재킷",
           "빵", "수프", "케이크", "집", "다리", "대문", "북", "피리"],
    "th": ["กล่อง", "ชาม", "แจกัน", "หมวก", "โคมไฟ", "โถ", "อาคาร", "ชุดเดรส",
           "กาน้ำชา", "พัด", "เก้าอี้", "พรม", "จาน", "รองเท้า", "ผ้าพันคอ", "เสื้อแจ็กเก็ต",
           "ขนมปัง", "ซุป", "เค้ก", "บ้าน", "สะพาน", "ประตู", "กลอง", "ขลุ่ย"],
    "de": ["eine Schachtel", "eine Schüssel", "eine Vase", "ein Hut", "eine Lampe", "ein Krug",
           "ein Gebäude", "ein Kleid",
           "eine Teekanne", "ein Fächer", "ein Stuhl", "ein Teppich", "ein Teller", "Schuhe",
           "ein Schal", "eine Jacke", "Brot", "eine Suppe", "ein Kuchen", "ein Haus",
           "eine Brücke", "ein Tor", "eine Trommel", "eine Flöte"],
    "ru": ["коробка", "миска", "ваза", "шляпа", "лампа", "банка", "здание", "платье",
           "чайник", "веер", "стул", "ковёр", "тарелка", "обувь", "шарф", "куртка",
           "хлеб", "суп", "торт", "дом", "мост", "ворота", "барабан", "флейта"],
    "it": ["una scatola", "una ciotola", "un vaso", "un cappello", "una lampada",
           "un barattolo", "un edificio", "un vestito",
           "una teiera", "un ventaglio", "una sedia", "un tappeto", "un piatto", "scarpe",
           "una sciarpa", "una giacca", "pane", "una zuppa", "una torta", "una casa",
           "un ponte", "un cancello", "un tamburo", "un flauto"],
    "nl": ["een doos", "een kom", "een vaas", "een hoed", "een lamp", "een pot", "een gebouw",
           "een jurk",
           "een theepot", "een waaier", "een stoel", "een tapijt", "een bord", "schoenen",
           "een sjaal", "een jas", "brood", "soep", "een taart", "een huis", "een brug",
           "een poort", "een trom", "een fluit"],
    "pl": ["pudełko", "miska", "wazon", "kapelusz", "lampa", "słoik", "budynek", "sukienka",
           "imbryk", "wachlarz", "krzesło", "dywan", "talerz", "buty", "szalik", "kurtka",
           "chleb", "zupa", "ciasto", "dom", "most", "brama", "bęben", "flet"],
    "tr": ["kutu", "kase", "vazo", "şapka", "lamba", "kavanoz", "bina", "elbise",
           "demlik", "yelpaze", "sandalye", "halı", "tabak", "ayakkabı", "atkı", "ceket",
           "ekmek", "çorba", "pasta", "ev", "köprü", "kapı", "davul", "flüt"],
    "uk": ["коробка", "миска", "ваза", "капелюх", "лампа", "слоїк", "будівля", "сукня",
           "чайник", "віяло", "стілець", "килим", "тарілка", "взуття", "шарф", "куртка",
           "хліб", "суп", "торт", "будинок", "міст", "брама", "барабан", "флейта"],
    "es": ["una caja", "un cuenco", "un jarrón", "un sombrero", "una lámpara", "un tarro",
           "un edificio", "un vestido",
           "una tetera", "un abanico", "una silla", "una alfombra", "un plato", "zapatos",
           "una bufanda", "una chaqueta", "pan", "una sopa", "un pastel", "una casa",
           "un puente", "un portón", "un tambor", "una flauta"],
    "pt": ["uma caixa", "uma tigela", "um vaso", "um chapéu", "um candeeiro", "um frasco",
           "um edifício", "um vestido",
           "um bule", "um leque", "uma cadeira", "um tapete", "um prato", "sapatos",
           "um cachecol", "um casaco", "pão", "uma sopa", "um bolo", "uma casa",
           "uma ponte", "um portão", "um tambor", "uma flauta"],
    "fr": ["une boîte", "un bol", "un vase", "un chapeau", "une lampe", "une jarre",
           "un bâtiment", "une robe",
           "une théière", "un éventail", "une chaise", "un tapis", "une assiette",
           "des chaussures", "une écharpe", "une veste", "du pain", "une soupe", "un gâteau",
           "une maison", "un pont", "un portail", "un tambour", "une flûte"],
}

# Out-of-domain set (nouns disjoint from NOUNS_EN) for the cross-domain test.
OOD_NOUNS_EN: list[tuple[str, str, str]] = [
    ("a garden", "garden", "places"),
    ("a boat", "boat", "vehicles"),
    ("a kitchen", "kitchen", "places"),
    ("a clock", "clock", "objects"),
    ("a mirror", "mirror", "objects"),
    ("a candle", "candle", "objects"),
    ("a painting", "painting", "art"),
    ("a pillow", "pillow", "objects"),
]
OOD_NOUNS: dict[str, list[str]] = {
    "ar": ["حديقة", "قارب", "مطبخ", "ساعة حائط", "مرآة", "شمعة", "لوحة", "وسادة"],
    "zh": ["花园", "船", "厨房", "时钟", "镜子", "蜡烛", "画", "枕头"],
    "ja": ["庭", "船", "台所", "時計", "鏡", "ろうそく", "絵", "枕"],
    "ko": ["정원", "배", "부엌", "시계", "거울", "양초", "그림", "베개"],
    "th": ["สวน", "เรือ", "ห้องครัว", "นาฬิกา", "กระจกเงา", "เทียน", "ภาพวาด", "หมอน"],
    "de": ["ein Garten", "ein Boot", "eine Küche", "eine Uhr", "ein Spiegel", "eine Kerze",
           "ein Gemälde", "ein Kissen"],
    "ru": ["сад", "лодка", "кухня", "часы", "зеркало", "свеча", "картина", "подушка"],
    "it": ["un giardino", "una barca", "una cucina", "un orologio", "uno specchio",
           "una candela", "un dipinto", "un cuscino"],
    "nl": ["een tuin", "een boot", "een keuken", "een klok", "een spiegel", "een kaars",
           "een schilderij", "een kussen"],
    "pl": ["ogród", "łódź", "kuchnia", "zegar", "lustro", "świeca", "obraz", "poduszka"],
    "tr": ["bahçe", "tekne", "mutfak", "saat", "ayna", "mum", "tablo", "yastık"],
    "uk": ["сад", "човен", "кухня", "годинник", "дзеркало", "свічка", "картина", "подушка"],
    "es": ["un jardín", "un barco", "una cocina", "un reloj", "un espejo", "una vela",
           "un cuadro", "una almohada"],
    "pt": ["um jardim", "um barco", "uma cozinha", "um relógio", "um espelho", "uma vela",
           "um quadro", "uma almofada"],
    "fr": ["un jardin", "un bateau", "une cuisine", "une horloge", "un miroir", "une bougie",
           "un tableau", "un oreiller"],
}

_EN_ARTICLES = ("a", "an")


def _strip_article(phrase: str, articles: tuple[str, ...]) -> str:
    head, _, rest = phrase.partition(" ")
    return rest if rest and head in articles else phrase


def english_modifier_phrase(noun_only_en: str, culture: str) -> str:
    """"a box" -> "a Japanese-style box"; "shoes" -> "Japanese-style shoes"."""
    bare = _strip_article(noun_only_en, _EN_ARTICLES)
    name = CULTURE_NAMES[culture]
    if bare == noun_only_en:  # plural or uncountable: no article
        return f"{name}-style {bare}"
    article = "an" if name[0] in "AEIO" else "a"  # "a Ukrainian": the U sounds like "yu"
    return f"{article} {name}-style {bare}"


def compose(
    nouns_en: list[tuple[str, str, str]], nouns: dict[str, list[str]]
) -> list[Record]:
    """Build records culture by culture, noun by noun, from the tables."""
    records = []
    for culture in CULTURES:
        style = STYLES[culture]
        local = nouns[culture]
        if len(local) != len(nouns_en):
            raise ValueError(f"table for {culture!r} has {len(local)} nouns, expected {len(nouns_en)}")
        for (noun_only_en, slug, category), noun_only in zip(nouns_en, local):
            records.append(Record(
                id=f"{culture}-{slug}",
                culture=culture,
                language=culture,
                noun_only=noun_only,
                modifier_noun=style.template.format(noun_only=noun_only),
                noun_only_en=noun_only_en,
                modifier_noun_en=english_modifier_phrase(noun_only_en, culture),
                modifier=style.modifier,
                noun=_strip_article(noun_only, style.articles),
                category=category,
            ))
    return records


def write_jsonl(records: list[Record], path: Path) -> None:
    """Write records one JSON object per line (UTF-8, not ASCII-escaped), atomically."""
    atomic_write_text(path, "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records))


def main() -> None:
    write_jsonl(compose(NOUNS_EN, NOUNS), BUNDLED_PATH)
    write_jsonl(compose(OOD_NOUNS_EN, OOD_NOUNS), BUNDLED_OOD_PATH)


if __name__ == "__main__":
    main()
