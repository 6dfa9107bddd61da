import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrag.chunk import chunk_text, split_sentences


def test_split_sentences():
    assert split_sentences("A b. C d! E?") == ["A b.", "C d!", "E?"]
    assert split_sentences("Use tools, e.g. the hammer. Then stop.") == ["Use tools, e.g. the hammer.", "Then stop."]
    assert split_sentences("Title\n\nBody text here.\n\n  \n\nMore.") == ["Title", "Body text here.", "More."]
    assert split_sentences("In 1912 it sank. 1500 died.") == ["In 1912 it sank.", "1500 died."]
    assert split_sentences("   ") == []
    # initials and titles end no sentence; a capital word before a period does
    assert split_sentences("John F. Kennedy met Mr. Krabs. Vol. 53 sold. It was A. Then B.") == [
        "John F. Kennedy met Mr. Krabs.", "Vol. 53 sold.", "It was A. Then B."]
    assert split_sentences("Federal Center No. 1 opened. Ants work.") == ["Federal Center No. 1 opened.", "Ants work."]


def test_sentences_of_other_scripts_and_typographic_quotes():
    """A sentence starts with a capital of any script or a letter of a script without case; CJK writing ends
    its sentences at 。！？ with no space after; typographic quotes open and close as straight ones do."""
    assert split_sentences("Comment? Était-ce la gravité? Über Wasser. Как работали? Почему пчёлы?") == [
        "Comment?", "Était-ce la gravité?", "Über Wasser.", "Как работали?", "Почему пчёлы?"]
    assert split_sentences("Il est né à Paris. élevé à Lyon, lit. über alles.") == [
        "Il est né à Paris. élevé à Lyon, lit. über alles."]  # a lower-case letter starts no sentence
    assert split_sentences("ローマの水道橋は水を運んだ。ミツバチは巣を冷やす！「本当？」と彼は聞いた。") == [
        "ローマの水道橋は水を運んだ。", "ミツバチは巣を冷やす！", "「本当？」と彼は聞いた。"]
    assert split_sentences("She left. “Why?” he asked. «Non.» Done.") == [
        "She left.", "“Why?” he asked.", "«Non.»", "Done."]
    assert split_sentences("etc.\n\nthe next paragraph starts low.") == ["etc.", "the next paragraph starts low."]
    assert split_sentences("كيف عملت القنوات؟ لماذا تبرد النحل الخلية؟") == [
        "كيف عملت القنوات؟", "لماذا تبرد النحل الخلية؟"]


def test_questions_typed_in_lower_case_and_the_full_stops_of_more_scripts():
    """"how did X? why do Y?" was one part (a lower-case letter started no sentence even after a question
    mark); Georgian (its letters count as lower case), Urdu, Armenian, Ethiopic and Burmese full stops and the
    half-width ｡ never ended a sentence, so their documents' chunks shared no sentence and cut mid-sentence."""
    assert split_sentences("how did aqueducts work? why do bees fan their hive?") == [
        "how did aqueducts work?", "why do bees fan their hive?"]
    assert split_sentences("Yahoo! is a company. e.g. this stays.") == ["Yahoo! is a company. e.g. this stays."]
    for whole in ("What does a ? b : c mean in C?", "select * where id = ? and name = ? order by id.",
                  "Use ? as a wildcard.", "Is it ok? (yes) and no.", "Is a ?? b the same?"):
        assert split_sentences(whole) == [whole]  # a question mark that ends no word, or before a bracket
    assert split_sentences("¿qué es un acueducto? ¿por qué?") == ["¿qué es un acueducto?", "¿por qué?"]
    assert split_sentences("who wrote “Dune”? when was it? is it C++? or 5%? yes") == [
        "who wrote “Dune”?", "when was it?", "is it C++?", "or 5%?", "yes"]
    assert split_sentences("ეს პირველია. ეს მეორეა.") == ["ეს პირველია.", "ეს მეორეა."]
    assert split_sentences("یہ پہلا ہے۔ یہ دوسرا ہے۔") == ["یہ پہلا ہے۔", "یہ دوسرا ہے۔"]
    assert split_sentences("Առաջին նախադասություն։ Երկրորդը։") == ["Առաջին նախադասություն։", "Երկրորդը։"]
    assert split_sentences("መጀመሪያ ነው። ሁለተኛ ነው።") == ["መጀመሪያ ነው።", "ሁለተኛ ነው።"]
    assert split_sentences("ပထမ ဝါကျ။ ဒုတိယ ဝါကျ။") == ["ပထမ ဝါကျ။", "ဒုတိယ ဝါကျ။"]
    assert split_sentences("これは｡あれは｡") == ["これは｡", "あれは｡"]


def test_closing_quotes_and_brackets_stay_with_their_sentence():
    text = 'He said "Stop." Then he left. (See above.) Next one!'
    assert split_sentences(text) == ['He said "Stop."', "Then he left.", "(See above.)", "Next one!"]


def test_a_run_of_initials_is_read_once(monkeypatch):
    """A piece ending in an initial joins the next; each piece's end is tested, not the sentence joined so far
    (an author list of 12,000 names took 33 s: every join read the whole sentence again)."""
    from mrag import chunk

    names = " ".join(f"G. Aad{i}, B. Abbott{i}," for i in range(300)) + " wrote it. Then more."
    read: list[int] = []
    pattern = chunk._NOT_AN_END
    monkeypatch.setattr(chunk, "_NOT_AN_END", type("Counted", (), {
        "search": staticmethod(lambda text: read.append(len(text)) or pattern.search(text))}))
    assert split_sentences(names) == [names.removesuffix(" Then more."), "Then more."]
    assert max(read) < 30


def test_chunks_by_hand():
    text = "One two. Three four. Five six."  # sentences of 8, 11 and 9 characters
    # max 20: "One two. Three four." is 8 + 1 + 11 = 20, fits; adding "Five six." would make 30.
    # The carried "Three four." + " Five six." is 21 > 20, so nothing is carried.
    assert chunk_text(text, max_chars=20, overlap=1) == ["One two. Three four.", "Five six."]
    # max 21: now the overlap sentence fits in front of the next one
    assert chunk_text(text, max_chars=21, overlap=1) == ["One two. Three four.", "Three four. Five six."]
    assert chunk_text(text, max_chars=21, overlap=0) == ["One two. Three four.", "Five six."]
    # everything fits in one chunk
    assert chunk_text(text, max_chars=100) == [text]
    # one sentence per chunk; the overlap never fits with a second sentence
    assert chunk_text(text, max_chars=11, overlap=1) == ["One two.", "Three four.", "Five six."]


def test_overlap_of_two_sentences():
    text = "Aa. Bb. Cc. Dd."  # 3 characters each
    assert chunk_text(text, max_chars=11, overlap=2) == ["Aa. Bb. Cc.", "Bb. Cc. Dd."]
    # only the last sentence that fits is carried
    assert chunk_text(text, max_chars=8, overlap=2) == ["Aa. Bb.", "Bb. Cc.", "Cc. Dd."]


def test_long_sentence_is_cut_at_word_boundaries():
    sentence = "alpha beta gamma delta epsilon"
    # alpha beta (10) | + gamma = 16 > 12 | gamma delta (11) | + epsilon = 19 > 12 | epsilon
    assert chunk_text(sentence, max_chars=12, overlap=0) == ["alpha beta", "gamma delta", "epsilon"]
    assert chunk_text(sentence, max_chars=12, overlap=1) == ["alpha beta", "gamma delta", "epsilon"]


def test_a_giant_word_is_cut_hard():
    assert chunk_text("x" * 25, max_chars=10) == ["x" * 10, "x" * 10, "x" * 5]
    assert chunk_text("ab " + "y" * 20 + " cd", max_chars=10, overlap=0) == ["ab", "y" * 10, "y" * 10, "cd"]


def test_empty_text_gives_no_chunks():
    assert chunk_text("") == []
    assert chunk_text(" \n\n ") == []


@pytest.mark.parametrize("max_chars, overlap", [(0, 1), (-5, 1), (100, -1)])
def test_bad_sizes_are_rejected(max_chars, overlap):
    with pytest.raises(ValueError):
        chunk_text("Some text.", max_chars=max_chars, overlap=overlap)


words = st.text(alphabet="abcdefgh", min_size=1, max_size=9)
sentence = st.builds(
    lambda first, rest, end: " ".join([first.capitalize(), *rest]) + end,
    words,
    st.lists(words, max_size=12),
    st.sampled_from([".", "!", "?", '."', ".)"]),
)


@given(st.lists(sentence, min_size=1, max_size=12), st.integers(1, 80), st.integers(0, 3))
@settings(max_examples=300, deadline=None)
def test_chunks_are_bounded_and_lose_nothing(sentences, max_chars, overlap):
    # number every word so that each chunk can be located in the text without ambiguity
    tokens = [f"{i}{t}" for i, t in enumerate(" ".join(sentences).split())]
    text = " ".join(tokens)
    chunks = chunk_text(text, max_chars=max_chars, overlap=overlap)
    assert chunks and all(0 < len(c) <= max_chars for c in chunks)
    if max_chars < 16:  # words (up to 15 chars here) may be cut hard
        assert "".join(text.split()) == "".join("".join(chunks).split()) or overlap > 0
        return
    # every chunk is a run of the text's words; the runs go forward, leave no gap and cover the end
    previous, end = -1, 0
    for n, chunk in enumerate(chunks):
        words = chunk.split()
        start = tokens.index(words[0])
        assert tokens[start : start + len(words)] == words
        assert start == 0 if n == 0 else previous < start <= end
        if overlap == 0:
            assert start == end
        previous, end = start, start + len(words)
    assert end == len(tokens)
