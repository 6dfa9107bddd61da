import json
import sys
from pathlib import Path

import pytest

from mrag.documents import Document
from mrag.formats import html_to_text
from mrag.ingest import NO_PDF_TEXT, IngestError, Skipped, read_file, read_paths


def make_pdf(text: str) -> bytes:
    """A one-page PDF showing `text` in Helvetica, with a correct cross-reference table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_txt_and_md(tmp_path):
    txt = write(tmp_path / "notes.txt", "Bees fan their wings.\n")
    md = write(tmp_path / "guide.MD", "# Roads\n\nRoman roads were straight.")
    docs, skipped = read_paths([txt, md])
    assert skipped == []
    assert docs == [
        Document(id=str(txt.resolve()), text="Bees fan their wings.\n", source=str(txt.resolve()), title="notes"),
        Document(id=str(md.resolve()), text="# Roads\n\nRoman roads were straight.", source=str(md.resolve()),
                 title="guide"),
    ]


def test_utf16_with_its_byte_order_mark_is_text(tmp_path):
    for encoding in ("utf-16", "utf-16-be"):  # little-endian with its mark, then big-endian with one written
        data = ("\ufeff" if encoding.endswith("be") else "").join(["", "Über Bienen."]).encode(encoding)
        path = tmp_path / f"{encoding}.txt"
        path.write_bytes(data)
        assert [d.text for d in read_file(path)] == ["Über Bienen."]
    (tmp_path / "odd.txt").write_bytes(b"\xff\xfeA\x00\x00\xd8")  # a lone surrogate half
    with pytest.raises(IngestError, match="not UTF-16 text"):
        read_file(tmp_path / "odd.txt")
    (tmp_path / "u32.txt").write_bytes("Über Bienen.".encode("utf-32"))  # its mark begins as UTF-16's
    assert read_file(tmp_path / "u32.txt")[0].text == "Über Bienen."
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe" + bytes(98))  # a mark, then zeros: no text
    with pytest.raises(IngestError, match="a binary file"):
        read_file(tmp_path / "bin.txt")
    (tmp_path / "late.txt").write_bytes(b"hello world " * 1000 + b"\x00tail")  # a NUL past the first 8 KiB
    with pytest.raises(IngestError, match="a binary file"):
        read_file(tmp_path / "late.txt")


def test_utf8_bom_is_dropped(tmp_path):
    path = write(tmp_path / "bom.txt", "Café au lait.".encode("utf-8-sig"))
    assert read_file(path)[0].text == "Café au lait."


def test_text_is_read_composed_and_a_file_of_invisible_characters_is_empty(tmp_path):
    path = write(tmp_path / "nfd.txt", "Cafe\u0301 au lait, soft\u00adly.")
    assert read_file(path)[0].text == "Café au lait, softly."
    with pytest.raises(IngestError, match="the file is empty"):
        read_file(write(tmp_path / "zwsp.txt", "\u200b\u200b \u00ad"))
    records = write(tmp_path / "r.jsonl", json.dumps({"id": 1, "text": "\u200b"}))
    with pytest.raises(IngestError, match="line 1 has an empty 'text'"):
        read_file(records)


def test_markdown_front_matter_gives_the_title_and_is_not_indexed(tmp_path):
    """Jekyll, Hugo and Obsidian notes: the front matter was indexed as the text's start, its title ignored."""
    yaml = write(tmp_path / "bees.md", '---\ntitle: "Über Bienen"\ndate: 2024-05-01\ntags: [bees]\n---\n# Bees\n\n'
                                        'Honeybees fan their wings.')
    assert [(d.title, d.text) for d in read_file(yaml)] == [("Über Bienen", "# Bees\n\nHoneybees fan their wings.")]
    toml = write(tmp_path / "hugo.md", "+++\ntitle = 'Tides'\n+++\nThe Moon raises the tides.")
    assert [(d.title, d.text) for d in read_file(toml)] == [("Tides", "The Moon raises the tides.")]
    untitled = write(tmp_path / "notes.md", "---\ntags: [x]\n---\nOwls hunt at night.")
    assert [(d.title, d.text) for d in read_file(untitled)] == [("notes", "Owls hunt at night.")]
    rule = "---\n\nA thematic break, then text.\n\n---\nMore."  # no key: not front matter
    assert read_file(write(tmp_path / "rule.md", rule))[0].text == rule
    assert read_file(write(tmp_path / "plain.txt", "---\ntitle: x\n---\nBody"))[0].text.startswith("---")
    # text between two rules that only looks like keys is text (it was dropped as front matter)
    for text in ("---\n\nNote: a draft.\n\nBees fan their wings.\n\n---\n\nAqueducts.",
                 "---\nhttps://example.com\n---\nLinks.", "---\nx = 5\n---\nMaths."):
        assert read_file(write(tmp_path / "text.md", text))[0].text == text
    titles = {"title: 'It''s bees'": "It's bees", 'title: "Say \\"hi\\""': 'Say "hi"', "title: Bees # draft": "Bees",
              "title: >-\n  Folded": "t"}  # a block scalar: the file's name
    for line, title in titles.items():
        assert read_file(write(tmp_path / "t.md", f"---\n{line}\n---\nBody."))[0].title == title
    alone = read_file(write(tmp_path / "card.md", "---\ntitle: Honeybees\ntags: [bees]\n---\n"))
    assert [(d.title, d.text) for d in alone] == [("Honeybees", "Honeybees")]  # front matter alone: its title


def test_markdown_front_matter_fields_are_metadata(tmp_path):
    """Its fields but the title were dropped (author, tags, date: what `--where` would filter on)."""
    yaml = write(tmp_path / "bees.md", "---\ntitle: Bees\ndate: 2024-05-01\ntags: [bees, hives]\nauthor: me\n"
                                       "1: one\n---\nHoneybees fan their wings.")
    assert read_file(yaml)[0].metadata == {"date": "2024-05-01", "tags": ["bees", "hives"], "author": "me", "1": "one"}
    toml = write(tmp_path / "hugo.md", "+++\ntitle = 'Tides'\ndraft = true\n[params]\nlang = 'en'\n+++\nMoon.")
    assert read_file(toml)[0].metadata == {"draft": True, "params": {"lang": "en"}}
    broken = write(tmp_path / "odd.md", "---\ntitle: Odd\ntags: [unclosed\n---\nText.")  # no YAML: the title alone
    assert [(d.title, d.metadata) for d in read_file(broken)] == [("Odd", {})]
    # as the note's author sees them (YAML 1.1 read 630, 5349, false and a key true), a date key as text, a value
    # JSON cannot hold leaving out its field alone (one dropped them all)
    typed = write(tmp_path / "typed.md", "---\ntime: 10:30\nzip: 012345\ncountry: NO\non: yes\nn: 12\nx: 1.5\n"
                                         "ok: true\n2024-01-02: shipped\nthumb: !!binary aGVsbG8=\n---\nText.")
    assert read_file(typed)[0].metadata == {"time": "10:30", "zip": "012345", "country": "NO", "on": "yes", "n": 12,
                                            "x": 1.5, "ok": True, "2024-01-02": "shipped"}
    # aliases are not read (each expanded again into JSON: 495 bytes of nine levels took over a minute and 2 GB)
    levels = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = write(tmp_path / "bomb.md", "---\ntitle: Bomb\n" + "\n".join(levels) + "\n---\nText.")
    assert [(d.title, d.metadata) for d in read_file(bomb)] == [("Bomb", {})]
    assert read_file(write(tmp_path / "plain.md", "No front matter."))[0].metadata == {}


def test_html_title_and_visible_text(tmp_path):
    page = """<!doctype html><html><head><title> Hive  heat </title><meta charset="utf-8">
    <style>body { color: red }</style><script>var secret = "do not index";</script></head>
    <body><h1>Bees</h1><p>Workers   fan
    their wings.</p><noscript>enable js</noscript><ul><li>one</li><li>two &amp; three</li></ul></body></html>"""
    (doc,) = read_file(write(tmp_path / "page.html", page))
    assert doc.title == "Hive heat"  # one line, spaces as one
    assert doc.text == "Bees\n\nWorkers fan their wings.\n\none\n\ntwo & three"
    assert "secret" not in doc.text and "color" not in doc.text and "enable js" not in doc.text


def test_an_html_title_is_one_line():
    assert html_to_text("<title>Café &amp; Menü\n   Spéciale</title><p>Soup.</p>")[0] == "Café & Menü Spéciale"


def test_html_without_title_uses_the_file_name(tmp_path):
    (doc,) = read_file(write(tmp_path / "plain.htm", "<p>Just text.</p>"))
    assert (doc.title, doc.text) == ("plain", "Just text.")
    assert html_to_text("<div>a<br>b</div><script>x</script>") == ("", "a\n\nb")


def test_minified_html_keeps_words_of_neighbouring_elements_apart():
    """Where a block ends or a cell starts the words are apart, as a browser shows them; an icon's <title>
    is neither the page's title nor its text."""
    page = ("<html><head><title>T</title></head><body><svg><title>icon</title></svg><h1>Heading</h1>Loose text."
            "<table><tr><td>Alpha</td><td>Beta</td></tr></table><dl><dt>Term</dt><dd>Definition</dd></dl>"
            "<blockquote>Quote.</blockquote><pre>code</pre><footer>Foot</footer></body></html>")
    assert html_to_text(page) == ("T", "Heading\n\nLoose text.\n\nAlpha Beta\n\nTerm\n\nDefinition\n\nQuote."
                                       "\n\ncode\n\nFoot")


def test_html_text_after_the_last_tag_and_marked_sections(tmp_path, monkeypatch):
    """Python's parser held back the text after the last tag while an `&` near its end might begin a reference
    (the file then read as empty), and stopped with an AssertionError at a marked section it does not know; what
    a file cuts off (a comment, a tag) is dropped, as a browser drops it, and Word's conditional comments stay
    comments."""
    assert html_to_text("<p>First.</p>\n<p>AT&T. See R&D") == ("", "First.\n\nAT&T. See R&D")
    assert html_to_text("no tags at all, AT&T &copy 2020") == ("", "no tags at all, AT&T © 2020")
    word = "<p>Bad <![ if gte mso 9]>here</p><![if !supportLists]>-<![endif]><p>x <![x y</p>"
    assert html_to_text(word) == ("", "Bad here\n\n-\n\nx")  # `<![x y</p>` a bogus comment, as browsers read it
    memo = ("<html><head><title>Memo</title><!--[if gte mso 9]><xml><o:Author>Jane Doe</o:Author></xml><![endif]-->"
            "</head><body><p>The budget is approved.</p><!--[if !mso]><!--><p>Web.</p><!--<![endif]-->"
            "<!--[if mso]><p>Outlook.</p><![endif]--></body></html>")
    assert html_to_text(memo) == ("Memo", "The budget is approved.\n\nWeb.")
    for cut in ("<!-- tracking secret", '<img src="x.png" alt="logo', "<!DOCTYPE html", "<![CDATA[ abc", "</"):
        assert html_to_text("<p>Body.</p>" + cut) == ("", "Body."), cut
    folder = tmp_path / "pages"
    write(folder / "good.html", "<p>Good page.</p>")
    write(folder / "word.html", word)
    write(folder / "odd.html", "<p>odd</p>")
    real = html_to_text
    monkeypatch.setattr("mrag.ingest.html_to_text", lambda markup: real(markup) if "odd" not in markup else
                        (_ for _ in ()).throw(AssertionError("expected name token")))
    with pytest.raises(IngestError, match="odd.html: unreadable HTML"):  # what the parser may still not read
        read_file(folder / "odd.html")
    docs, skipped = read_paths([folder])  # in a folder: skipped, the others read
    assert sorted(d.text for d in docs) == ["Bad here\n\n-\n\nx", "Good page."]
    assert [Path(s.source).name for s in skipped] == ["odd.html"]


def test_json_list_of_records(tmp_path):
    rows = [
        {"id": 7, "text": "First record.", "title": "One", "year": 1999},
        {"text": "Second record, no id.", "tags": ["a", "b"]},
    ]
    path = write(tmp_path / "records.json", json.dumps(rows))
    source = str(path.resolve())
    docs = read_file(path)
    assert docs == [
        Document("7", "First record.", source, "One", {"year": 1999}),
        Document(f"{source}#1", "Second record, no id.", source, "", {"tags": ["a", "b"]}),
    ]
    single = write(tmp_path / "one.json", json.dumps({"text": "Only one."}))
    assert [d.text for d in read_file(single)] == ["Only one."]


def test_jsonl_with_custom_fields(tmp_path):
    lines = [
        {"doc": "D1", "body": "Aqueducts carried water.", "title": "Rome", "era": "ancient"},
        {"doc": "D2", "body": "Bees regulate heat.", "lang": "en"},
    ]
    path = write(tmp_path / "corpus.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    docs, _ = read_paths([path], text_field="body", id_field="doc")
    assert [(d.id, d.text, d.title, d.metadata) for d in docs] == [
        ("D1", "Aqueducts carried water.", "Rome", {"era": "ancient"}),
        ("D2", "Bees regulate heat.", "", {"lang": "en"}),
    ]
    with pytest.raises(IngestError, match="line 1 has no string field 'text'"):
        read_paths([path])  # default field names do not fit these records


def test_a_record_s_metadata_object_is_merged_as_index_add_merges_it(tmp_path):
    from mrag.documents import as_document

    record = {"id": "m1", "text": "Bees.", "metadata": {"topic": "bees", "lang": "fr"}, "lang": "en"}
    path = write(tmp_path / "r.jsonl", json.dumps(record) + "\n" + json.dumps({"text": "Ants.", "metadata": None}))
    docs = read_file(path)
    assert [d.metadata for d in docs] == [{"topic": "bees", "lang": "en"}, {}]  # a field wins over a key
    assert as_document(record, 0).metadata == docs[0].metadata
    odd = write(tmp_path / "odd.jsonl", '{"text": "b", "metadata": "red", "score": NaN, "v": [1, Infinity]}')
    assert read_file(odd)[0].metadata == {"metadata": "red", "score": None, "v": [1, None]}  # a file's own data
    assert as_document({"text": "b", "score": float("nan")}, 0).metadata == {"score": None}  # pandas' missing
    nan_title = as_document({"text": "b", "title": float("nan"), "source": float("inf")}, 0)
    assert (nan_title.title, nan_title.source) == ("", "") and as_document({"text": "b", "title": 0}, 0).title == "0"
    titled = write(tmp_path / "t.jsonl", '{"text": "c", "title": NaN}\n{"text": "d", "title": 7}')
    assert [d.title for d in read_file(titled)] == ["", "7"]


def test_jsonl_records_are_lines_and_their_strings_may_hold_any_separator(tmp_path):
    """JSON strings may hold U+2028 / U+2029 unescaped (json.dumps(ensure_ascii=False) writes them so): a
    record is a line ended by "\\n" (or "\\r\\n"), not what str.splitlines cuts."""
    records = [{"id": "a", "text": "one\u2028two\u2029three\x1cfour"}, {"id": "b", "text": "five"}]
    path = write(tmp_path / "r.jsonl", "\r\n".join(json.dumps(r, ensure_ascii=False) for r in records))
    assert [(d.id, d.text) for d in read_file(path)] == [(r["id"], r["text"]) for r in records]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.json", "{not json", "invalid JSON"),
        ("bad.json", '[{"text": "a"},\n\n {oops}]', r"invalid JSON at line 3, column 3 \(Expecting"),
        ("bad.jsonl", '{"text": "a"}\n\n{"text": "b"}\r\n{oops\n', "invalid JSON at line 4, column 2"),  # file's line
        ("cut.jsonl", '{"text": "a"}\n{"text": "b', r"invalid JSON at line 2, column 10 \(Unterminated string"),
        ("empty.jsonl", "\n\n", "the file is empty"),
        ("blank.json", '[{"text": "  "}]', "record 1 has an empty 'text'"),
        ("blank.jsonl", '{"text": "a"}\n\n{"text": " "}', "line 3 has an empty 'text'"),  # the file's line
        ("none.json", "[]", "no records"),
        ("nums.json", "[1, 2]", "record 1 is not a JSON object"),
        ("lists.jsonl", '{"text": "a"}\n[1, 2, 3]', "line 2 is not a JSON object"),
        ("listid.jsonl", '{"id": ["m-d"], "text": "a"}', r"line 1: the id 'id' must be a string or a number, not \["),
        ("boolid.json", '[{"id": 7, "text": "a"}, {"id": true, "text": "b"}]', "record 2: the id 'id' .* not true"),
        ("emptyid.jsonl", '{"id": "", "text": "a"}', 'line 1: the id .* not ""'),
        ("nanid.jsonl", '{"id": NaN, "text": "a"}', "line 1: the id .* not NaN"),

    ],
)
def test_bad_records(tmp_path, name, content, message):
    with pytest.raises(IngestError, match=message):
        read_file(write(tmp_path / name, content))


def test_pdf(tmp_path):
    path = write(tmp_path / "tides.pdf", make_pdf("The Moon raises the tides."))
    (doc,) = read_file(path)
    assert (doc.title, doc.text.strip()) == ("tides", "The Moon raises the tides.")


def test_broken_and_empty_pdf(tmp_path, caplog):
    with pytest.raises(IngestError, match="unreadable PDF"):
        read_file(write(tmp_path / "broken.pdf", b"this is not a PDF at all"))
    with pytest.raises(IngestError, match="unreadable PDF"):
        read_file(write(tmp_path / "cut.pdf", b"%PDF-1.4\nbroken"))
    # pypdf's warning ("EOF marker not found") went to stderr before the one line that says why
    assert not [r for r in caplog.records if r.name.startswith("pypdf")]
    from pypdf import PdfWriter

    blank = PdfWriter()
    blank.add_blank_page(100, 100)
    blank.write(tmp_path / "blank.pdf")
    with pytest.raises(IngestError, match=r"blank.pdf: a PDF with no text to extract \(a scan\?"):
        read_file(tmp_path / "blank.pdf")  # it said "the file is empty" of a scan of any size
    docs, skipped = read_paths([tmp_path / "blank.pdf"], empty_ok=True)  # a prune: as an emptied file
    assert docs == [] and [s.reason for s in skipped] == [NO_PDF_TEXT]


def test_pdf_without_pypdf_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdf", None)  # import fails
    path = write(tmp_path / "tides.pdf", make_pdf("Tides."))
    with pytest.raises(IngestError, match=r"mrag\[pdf\]"):
        read_file(path)
    docs, skipped = read_paths([tmp_path])  # in a folder: skipped with the reason
    assert docs == []
    assert skipped == [Skipped(str(path.resolve()), "PDF support needs the pdf extra: pip install 'mrag[pdf]'")]


BAD_FILES = {
    "binary.txt": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a binary file, not text"),
    "latin1.txt": ("café".encode("latin-1"),
                   "not UTF-8 text (byte 3): save it as UTF-8 (iconv -f ENCODING -t utf-8, the ENCODING it was "
                   "written in: latin1, cp1252, shift_jis, gbk, ...)"),
    "utf16.txt": ("Bees fan their wings.\n".encode("utf-16-le"),  # Windows' "Unicode" without its byte-order mark
                  "UTF-16 text without a byte-order mark, it seems: save it as UTF-8 (iconv -f utf-16le -t utf-8)"),
    "utf16be.md": ("Owls.".encode("utf-16-be"),
                   "UTF-16 text without a byte-order mark, it seems: save it as UTF-8 (iconv -f utf-16be -t utf-8)"),
    "empty.md": (b"  \n\t\n", "the file is empty"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_named_explicitly_is_an_error(tmp_path, name):
    content, reason = BAD_FILES[name]
    path = write(tmp_path / name, content)
    with pytest.raises(IngestError) as info:
        read_paths([path])
    assert str(info.value) == f"{path}: {reason}"


def test_folder_walk_leaves_out_indexes_and_lancedb_tables(tmp_path, fake):
    """`mrag index . --db idx` from the corpus folder: the index's own files (LanceDB's JSON, graphs'
    meta.json) are not documents, nor is any LanceDB table's folder."""
    from mrag.index import Index

    root = tmp_path / "corpus"
    write(root / "a.txt", "Alpha.")
    index = Index.open(root / "idx", embedder=fake)
    index.add_paths([root / "a.txt"])
    write(root / "idx" / "graphs" / "1-2-x" / "meta.json", '{"rows": 1}')
    write(root / "idx" / "top.json", '{"text": "beside the index files"}')
    write(root / "notes" / "t.lance" / "_versions" / "1.json", '{"text": "a table"}')
    write(root / "notes" / "b.md", "Beta.")
    docs, skipped = read_paths([root])
    assert sorted(Path(d.source).name for d in docs) == ["a.txt", "b.md"] and skipped == []


def test_folder_walk_skips_hidden_and_unsupported_and_reports_unreadable(tmp_path):
    root = tmp_path / "corpus"
    good = [
        write(root / "a.txt", "Alpha."),
        write(root / "sub" / "b.md", "Beta."),
        write(root / "sub" / "deeper" / "c.html", "<title>C</title><p>Gamma.</p>"),
        write(root / "d.pdf", make_pdf("Delta.")),
    ]
    write(root / ".hidden.txt", "hidden file")
    write(root / ".git" / "notes.txt", "inside a hidden folder")
    write(root / "sub" / ".cache" / "x.md", "inside a hidden subfolder")
    write(root / "script.py", "print('not a document')")
    write(root / "image.png", b"\x89PNG\x00\x00")
    for name, (content, _) in BAD_FILES.items():
        write(root / "bad" / name, content)

    docs, skipped = read_paths([root])
    assert [d.source for d in docs] == sorted(str(p.resolve()) for p in good)
    assert [d.text.strip() for d in docs] == ["Alpha.", "Delta.", "Beta.", "Gamma."]
    assert skipped == [
        Skipped(str(root / "bad" / name), reason) for name, (_, reason) in sorted(BAD_FILES.items())
    ]


def test_folder_and_file_together(tmp_path):
    folder = tmp_path / "f"
    write(folder / "one.txt", "One.")
    extra = write(tmp_path / "two.txt", "Two.")
    docs, skipped = read_paths([folder, str(extra)])
    assert [d.text for d in docs] == ["One.", "Two."] and skipped == []


def test_a_file_reached_twice_is_read_once(tmp_path):
    """A folder and a file in it, a folder and its sub-folder, a link to a file also listed: one document
    each (they had the same id, and the run failed on duplicate ids)."""
    folder = tmp_path / "f"
    one = write(folder / "one.txt", "One.")
    write(folder / "sub" / "two.txt", "Two.")
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "link.txt").symlink_to(one)
    docs, skipped = read_paths([folder, one, folder / "sub", tmp_path / "links"])
    assert sorted(d.id for d in docs) == sorted(str(p.resolve()) for p in (one, folder / "sub" / "two.txt"))
    assert skipped == []
    write(folder / "bad.txt", b"\x00")
    with pytest.raises(IngestError, match="binary"):  # named explicitly once: an error, as when named alone
        read_paths([folder, folder / "bad.txt"])


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(IngestError, match="no such file or folder: .*nowhere"):
        read_paths([tmp_path / "nowhere"])


def test_a_folder_file_that_cannot_be_read_is_skipped_and_one_named_is_an_error(tmp_path, monkeypatch):
    """No permission, or gone between the folder's listing and its reading (an editor's save by rename): the
    folder's other files are read. Named on its own, such a file is an error."""
    import mrag.ingest

    folder = write(tmp_path / "notes" / "locked.txt", "secret").parent
    write(folder / "ok.txt", "Glaciers carve valleys.")
    listed = list(mrag.ingest.walk_files(folder)) + [folder / "vanished.txt"]
    monkeypatch.setattr(mrag.ingest, "walk_files", lambda path: iter(listed))
    real = Path.read_bytes

    def read_bytes(path):
        if path.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    docs, skipped = read_paths([folder])
    assert [Path(d.source).name for d in docs] == ["ok.txt"]
    assert [(Path(s.source).name, s.reason) for s in skipped] == [
        ("locked.txt", "cannot be read (Permission denied)"),
        ("vanished.txt", "cannot be read (No such file or directory)")]
    with pytest.raises(IngestError, match="locked.txt: cannot be read"):
        read_paths([folder / "locked.txt"])


def without_root_permissions(tmp_path: Path, code: str) -> dict:
    """Run `code` (which prints one JSON object) in a process that file permissions apply to: as this user, or
    as root with the capabilities that bypass them dropped (setpriv); skipped where neither is possible."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root without setpriv: file permissions cannot be enforced")
        drop = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", *command]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    if done.returncode and "setpriv" in done.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.parametrize("mode", [0o644, 0o000])
def test_a_folder_that_cannot_be_entered_or_listed_is_skipped_and_one_named_is_an_error(tmp_path, mode):
    """A sub-folder that can be listed but not entered (644: its files cannot be checked) or not listed at all
    (000): the other files are read and it is listed as skipped, never failing the run (644 did, with a raw
    errno message) nor silently missing (000 was). Named on its own, one that cannot be listed is an error."""
    write(tmp_path / "docs" / "ok.txt", "Glaciers carve valleys.")
    write(tmp_path / "docs" / "locked" / "owl.txt", "Owls hunt at night.")
    (tmp_path / "docs" / "locked").chmod(mode)
    code = """if True:
        import json
        from mrag.ingest import IngestError, read_paths
        docs, skipped = read_paths(["docs"])
        try:
            read_paths(["docs/locked"])
            alone = None
        except IngestError as e:
            alone = str(e)
        print(json.dumps({"docs": [d.title for d in docs], "skipped": [[s.source, s.reason] for s in skipped],
                          "alone": alone}))"""
    try:
        got = without_root_permissions(tmp_path, code)
    finally:
        (tmp_path / "docs" / "locked").chmod(0o755)
    assert got["docs"] == ["ok"]
    if mode == 0o644:
        assert got["skipped"] == [["docs/locked/owl.txt", "cannot be read (Permission denied)"]]
        assert got["alone"] is None  # listed: its files are skipped, as any folder's unreadable files
    else:
        assert got["skipped"] == [["docs/locked", "cannot be listed (Permission denied)"]]
        assert got["alone"] == "docs/locked: cannot be listed (Permission denied)"


def test_a_pipe_named_is_an_error(tmp_path):
    import os

    os.mkfifo(tmp_path / "queue.txt")
    with pytest.raises(IngestError, match="not a file or folder .*queue.txt"):
        read_paths([tmp_path / "queue.txt"])


def test_a_pipe_or_a_link_to_nothing_in_a_folder_is_listed_as_skipped(tmp_path):
    """Never opened (a pipe would block the run), never left out silently."""
    import os

    write(tmp_path / "notes" / "ok.txt", "Roman roads")
    os.mkfifo(tmp_path / "notes" / "queue.txt")
    (tmp_path / "notes" / "old.md").symlink_to(tmp_path / "gone.md")
    (tmp_path / "notes" / "self.txt").symlink_to("self.txt")  # a loop
    (tmp_path / "notes" / "sub.md").mkdir()  # a folder with a file's suffix is walked, not listed
    docs, skipped = read_paths([tmp_path / "notes"])
    assert [Path(d.source).name for d in docs] == ["ok.txt"]
    nothing = "a link to nothing (its target does not exist, or links back to it)"
    assert [(Path(s.source).name, s.reason) for s in skipped] == [
        ("old.md", nothing), ("queue.txt", "not a regular file (a pipe, a socket, a device?)"), ("self.txt", nothing)]


def test_skip_reason_when_the_path_holds_a_colon(tmp_path, monkeypatch):
    folder = write(tmp_path / "notes: 2024" / "blob.txt", b"\x00\x01").parent
    write(folder / "empty.txt", " ")
    expected = ["a binary file, not text", "the file is empty"]  # blob.txt, empty.txt
    assert [s.reason for s in read_paths([folder])[1]] == expected
    monkeypatch.chdir(tmp_path)  # a relative folder: the messages name the resolved path
    assert [s.reason for s in read_paths(["notes: 2024"])[1]] == expected


def test_a_library_document_s_id_may_be_0_and_its_metadata_must_be_a_dict():
    from mrag.documents import as_document

    assert as_document({"id": 0, "text": "zero"}, 0).id == "0"  # not a hash: 0 is an id
    assert as_document({"id": "", "text": "x"}, 0).id == as_document({"text": "x"}, 0).id  # "" as none: a hash
    with pytest.raises(ValueError, match="document 3: metadata must be an object \\(a dict\\), got str"):
        as_document({"text": "x", "metadata": "colour=red"}, 3)
    assert as_document({"text": "x", "metadata": None}, 0).metadata == {}  # none given
    for bad in ([1], False, {"a": 1}, float("nan"), float("inf")):  # as in a records file: no one's id
        with pytest.raises(ValueError, match="document 2: the id must be a string or a number"):
            as_document({"id": bad, "text": "x"}, 2)


def test_a_file_reached_through_a_link_is_read_as_itself_whichever_name_comes_first(tmp_path):
    """Its id is its own path; where the folder also reaches it by its own name, its title and kind are its
    own too: the link's name gave the title (a_link before zebra in sorted order), so the digest changed with
    how the file was named and an unchanged file was embedded again. Reached through links only (git-annex
    keeps the files under keys without a suffix), it is read as the link names it."""
    folder = tmp_path / "rt"
    folder.mkdir()
    (folder / "zebra.md").write_text("Zebras have black and white stripes.")
    (folder / "a_link.md").symlink_to("zebra.md")
    (folder / "b_records.txt").symlink_to("records.jsonl")  # a records file, also listed under a text name
    (folder / "records.jsonl").write_text('{"id": "r1", "text": "one"}\n{"id": "r2", "text": "two"}\n')
    by_folder, _ = read_paths([folder])
    named = [folder / n for n in ("zebra.md", "a_link.md", "b_records.txt", "records.jsonl")]
    by_file, _ = read_paths(named)
    zebra = [d for d in by_folder if d.source.endswith("zebra.md")]
    assert len(zebra) == 1 and zebra[0].title == "zebra"
    assert sorted(d.id for d in by_folder) == sorted(d.id for d in by_file) == sorted(["r1", "r2", zebra[0].source])
    assert {d.id: d.title for d in by_folder} == {d.id: d.title for d in by_file}
    annex = tmp_path / "annex"
    (annex / "store").mkdir(parents=True)
    (annex / "store" / "SHA256-s19--9d2c4e").write_text("<html><title>Bee guide</title>Bees fan the hive.</html>")
    (annex / "bees.html").symlink_to("store/SHA256-s19--9d2c4e")
    (doc,), _ = read_paths([annex])
    assert (doc.title, doc.text.strip()) == ("Bee guide", "Bees fan the hive.")


def test_a_file_python_cannot_parse_is_skipped_in_a_folder_and_an_error_alone(tmp_path):
    """JSON nested 500 deep (Python's recursion limit), and numbers of over 4,300 digits (in a JSON record, in an
    HTML character reference) raised RecursionError and ValueError: a traceback or an error that named no file,
    and none of the folder's other files indexed."""
    folder = tmp_path / "notes"
    write(folder / "ok.txt", "Roman roads")
    write(folder / "deep.json", '{"text": "t", "m": ' + "[" * 500 + "]" * 500 + "}")
    write(folder / "big.jsonl", '{"text": "a doc", "n": ' + "9" * 5000 + "}")
    write(folder / "page.html", "<html><title>T</title><body>hello &#" + "1" * 5000 + "; world</body></html>")
    docs, skipped = read_paths([folder])
    assert [Path(d.source).name for d in docs] == ["ok.txt"]
    reasons = {Path(s.source).name: s.reason for s in skipped}
    assert reasons["deep.json"] == "cannot be parsed (nested too deeply)"
    assert reasons["big.jsonl"].startswith("cannot be parsed (Exceeds the limit (4300 digits)")
    assert reasons["page.html"].startswith("cannot be parsed (Exceeds the limit (4300 digits)")
    with pytest.raises(IngestError, match=r"deep\.json: cannot be parsed \(nested too deeply\)"):
        read_file(folder / "deep.json")


@pytest.mark.parametrize(("title", "expected"), [("Rome", "Rome"), (7, "7"), (True, ""), (False, ""), (None, "")])
def test_a_record_s_title_is_text_or_a_number(tmp_path, title, expected):
    """A list or an object became its Python repr ("['x', 'y']"), and true "True" while false was no title."""
    path = write(tmp_path / "r.jsonl", json.dumps({"id": "a", "text": "Roman roads", "title": title}))
    assert read_file(path)[0].title == expected


@pytest.mark.parametrize("title", [["x", "y"], {"a": 1}])
def test_a_record_s_title_that_is_a_list_or_an_object_is_refused(tmp_path, title):
    path = write(tmp_path / "r.jsonl", json.dumps({"id": "a", "text": "Roman roads", "title": title}))
    with pytest.raises(IngestError, match=r"r\.jsonl: line 1: the title 'title' must be text or a number"):
        read_file(path)
    from mrag.documents import as_document

    with pytest.raises(ValueError, match="document 0: its title must be text or a number"):
        as_document({"id": "a", "text": "Roman roads", "title": title}, 0)
    from decimal import Decimal
    from fractions import Fraction

    for number, text in ((10 ** 400, "1" + "0" * 400), (Decimal("1.5"), "1.5"), (Decimal("NaN"), ""),
                         (Fraction(10 ** 400, 3), str(Fraction(10 ** 400, 3)))):  # OverflowError, Decimal refused
        assert as_document({"id": "a", "text": "Roman roads", "title": number}, 0).title == text
    for odd in (("a", "b"), {"a"}, b"x"):  # a library user's: their reprs were titles too
        with pytest.raises(ValueError, match="document 0: its source must be text or a number"):
            as_document({"id": "a", "text": "Roman roads", "source": odd}, 0)
