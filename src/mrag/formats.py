"""What a Markdown note and an HTML page hold as a document: the note's front matter (title, fields) and the
page's title and visible text. Pure text in, text out: `mrag.ingest` reads the files and says what went wrong."""

from __future__ import annotations

import functools
import html.parser
import json
import re
from typing import Any

from mrag.documents import json_key, json_ready

# a Markdown file's front matter (Jekyll, Hugo, Obsidian): YAML between "---" lines, or TOML between "+++"
# lines, at the very start; every line of it a key and its value (or a list item, a comment, a continuation
# indented): else it is a thematic break and text. Its title is the document's
FRONT_MATTER = re.compile(r"\A(---|\+\+\+)[ \t]*\r?\n(.*?)\r?\n(?:\1|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.S)
FRONT_LINE = {"---": re.compile(r"[\w-]+:(?:\s|$)|- |#|\s"), "+++": re.compile(r"[\w.\"'-]+\s*=|\[|#|\s")}
FRONT_TITLE = re.compile(r"^title[ \t]*[:=][ \t]*(.*?)[ \t]*$", re.M | re.I)


def front_matter(text: str) -> tuple[str, str, dict[str, Any]]:
    """(the front matter's title, or "", the text without its front matter, its other fields); text with none
    as it is. '---\ntitle: "Über Bienen"\ntags: [bees]\n---\n# Bees' -> ('Über Bienen', '# Bees', {'tags':
    ['bees']}). A note of front matter alone is its title."""
    found = FRONT_MATTER.match(text)
    lines = [line for line in found.group(2).splitlines() if line.strip()] if found else []
    if found is None or not lines or not all(FRONT_LINE[found.group(1)].match(line) for line in lines):
        return "", text, {}
    title = FRONT_TITLE.search(found.group(2))
    value = _scalar(title.group(1)) if title else ""
    body = text[found.end():]
    return value, body if body.strip() else value, front_fields(found.group(1), found.group(2))


def front_fields(fence: str, block: str) -> dict[str, Any]:
    """A front matter's fields but its title, as a document's metadata (dates in ISO 8601, keys as text); none
    where it is no mapping YAML (`---`, `_yaml`) or TOML (`+++`) reads. A value JSON cannot hold (YAML's
    `!!binary`) leaves out its field alone."""
    try:
        if fence == "---":
            import yaml

            parsed = yaml.load(block, Loader=_yaml_loader())  # noqa: S506  (a SafeLoader, see `_yaml_loader`)
        else:
            import tomllib  # Python 3.11 on; on 3.10 a TOML front matter gives its title only

            parsed = tomllib.loads(block)
    except Exception:  # YAML or TOML the line check let through, aliases, nesting past Python's stack
        return {}
    if not isinstance(parsed, dict):
        return {}
    fields: dict[str, Any] = {}
    for key, value in parsed.items():
        name = json_key(key)
        if name.lower() == "title":
            continue
        try:
            fields[name] = json_ready(value)
        except (ValueError, RecursionError):  # bytes; nesting past Python's stack
            continue
    return fields


@functools.cache
def _yaml_loader() -> Any:
    """PyYAML's SafeLoader reading scalars as a note's author sees them: `10:30`, `012345`, `NO` and `on` stay
    text (YAML 1.1 made them 630, 5349, false and true; a number has no leading zero); and no aliases (each
    `*a` expanded again when the fields are made JSON: nine levels of ten in 495 bytes took over a minute and 2
    GB in a reviewer's run)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("a front matter with aliases is read for its title only")
            return super().compose_node(parent, index)

    retyped = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
    Loader.yaml_implicit_resolvers = {first: [(tag, rule) for tag, rule in rules if tag not in retyped]
                                      for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"),
                                 list("-+0123456789"))
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^(?:[-+]?(?:(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)"
                   r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),  # a dot or an exponent: `012345` stays text
        list("-+0123456789."))
    return Loader


def _scalar(value: str) -> str:
    """A YAML or TOML title's text: quotes taken off ('It''s', "Say \\"hi\\""), a comment after it dropped;
    a block scalar (> or |, on the lines below) as none."""
    if value[:1] == '"':
        try:
            return str(json.JSONDecoder().raw_decode(value)[0])
        except ValueError:
            return value.strip('"')
    if value[:1] == "'":
        end = re.match(r"'((?:[^']|'')*)'", value)
        return end.group(1).replace("''", "'") if end else value.strip("'")
    value = re.sub(r"\s+#.*$", "", value)
    return "" if value[:1] in ("|", ">") else value


class _HTMLText(html.parser.HTMLParser):
    SKIP = {"script", "style", "noscript", "template", "svg"}  # an icon's <title> is no page title
    # a paragraph break where one of these starts or ends (minified pages put no space between them)
    BLOCK = {"p", "div", "br", "hr", "li", "ul", "ol", "dl", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6",
             "table", "thead", "tbody", "tfoot", "tr", "caption", "section", "article", "header", "footer", "nav",
             "main", "aside", "blockquote", "pre", "figure", "figcaption", "address", "details", "summary",
             "form", "fieldset"}
    CELL = {"td", "th"}  # a space between cells

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.title = ""
        self._stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._stack.append(tag)
        self._separate(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._stack:
            while self._stack and self._stack.pop() != tag:
                pass
        self._separate(tag)

    def _separate(self, tag: str) -> None:
        if tag in self.BLOCK:
            self.parts.append("\n\n")
        elif tag in self.CELL:
            self.parts.append(" ")

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        """`<![ ... ]>`: Word's and Outlook's `<![if !supportLists]>` and the like hold no text; Python's parser
        stopped the whole run with an AssertionError at the forms it does not know (`<![ if gte mso 9]>`)."""
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            end = self.rawdata.find(">", i + 3)
            return -1 if end < 0 else end + 1

    def handle_data(self, data: str) -> None:
        if self.SKIP & set(self._stack):
            return
        if "title" in self._stack:
            self.title += data.strip()
        else:
            self.parts.append(data)


def html_to_text(markup: str) -> tuple[str, str]:
    """(title, visible text) of an HTML page."""
    parser = _HTMLText()
    parser.feed(markup)
    # what the parser held back: text in which an `&` near its end might begin a reference (`AT&T` was lost), or
    # a tag, comment or declaration the file cuts off, dropped as a browser drops it (`close` made it text)
    if parser.rawdata and not parser.rawdata.startswith("<"):
        parser.handle_data(html.unescape(parser.rawdata))
    lines = [" ".join(line.split()) for line in "".join(parser.parts).split("\n\n")]
    return " ".join(parser.title.split()), "\n\n".join(line for line in lines if line)  # a title on one line


