"""Text decoding never loses a character; each cleaning step can be switched on and off."""

import pytest

from mmsent.config import TextConfig
from mmsent.data.text import clean_text, decode_text, text_attributes

ALL_OFF = TextConfig(remove_urls=False, remove_mentions=False, hashtags_to_words=False, lowercase=False,
                     fold_whitespace=False, emoji="keep", fold_repeats=False, remove_stopwords=False)


def test_utf8_is_read_as_utf8():
    text, fallback = decode_text("caf\u00e9 \U0001f600".encode("utf-8"))
    assert text == "caf\u00e9 \U0001f600" and not fallback


def test_gb18030_fallback_keeps_every_character():
    original = "\u201cGreat day\u201d\u3002 \u2014 ok \U0001f600"
    raw = original.encode("gb18030")
    text, fallback = decode_text(raw)
    assert fallback and text == original
    assert "\ufffd" not in text


def test_utf8_bom_is_dropped():
    assert decode_text(b"\xef\xbb\xbfhello") == ("hello", False)


def test_basic_cleaning():
    cfg = TextConfig(emoji="keep", fold_repeats=False)
    out = clean_text("RT @bob: Loving   the #SunnyDay http://t.co/abc www.x.com", cfg)
    assert out == "loving the sunnyday"


def test_each_step_can_be_off():
    raw = "RT @bob: Sooooo #Happy \U0001f600 http://t.co/x"
    assert clean_text(raw, ALL_OFF) == raw
    assert "http" not in clean_text(raw, ALL_OFF.model_copy(update={"remove_urls": True}))
    assert "@bob" not in clean_text(raw, ALL_OFF.model_copy(update={"remove_mentions": True}))
    assert "#" not in clean_text(raw, ALL_OFF.model_copy(update={"hashtags_to_words": True}))
    assert "Sooo " in clean_text(raw, ALL_OFF.model_copy(update={"fold_repeats": True}))
    assert clean_text("a  b", ALL_OFF.model_copy(update={"fold_whitespace": True})) == "a b"


def test_repeats_fold_to_three():
    cfg = ALL_OFF.model_copy(update={"fold_repeats": True})
    assert clean_text("noooooo!!!!! yes!!!", cfg) == "nooo!!! yes!!!"


def test_emoji_token_and_name():
    token = clean_text("fun \U0001f600", ALL_OFF.model_copy(update={"emoji": "token", "fold_whitespace": True}))
    assert token == "fun <emoji>"
    named = clean_text("fun \U0001f600", ALL_OFF.model_copy(update={"emoji": "name", "fold_whitespace": True}))
    assert named == "fun grinning face"


def test_stopword_removal_is_optional():
    cfg = ALL_OFF.model_copy(update={"remove_stopwords": True})
    assert clean_text("this is the best", cfg) == "best"


def test_attributes():
    attrs = text_attributes("RT @a: #x #y great \U0001f600 http://t.co/z")
    assert attrs["is_retweet"] and attrs["has_url"] and attrs["has_emoji"]
    assert attrs["n_hashtags"] == 2


def test_hashtags_are_segmented_into_words():
    from mmsent.data.text import segment_hashtag

    assert segment_hashtag("ThrowbackThursday") == "Throwback Thursday"
    assert segment_hashtag("happyfriday") == "happy friday"
    cfg = TextConfig(segment_hashtags=True, lowercase=False)
    assert clean_text("So #happyfriday to all #TBT", cfg) == "So happy friday to all tbt"  # one word: as segmented


def test_compact_counts_read_like_the_packages_dict(tmp_path):
    from mmsent.data.text import CompactCounts

    counts = tmp_path / "counts.txt"
    counts.write_text("of the\t5\nin a\t2\nof the\t7\n", encoding="utf-8")  # a pair listed twice: the last count
    table = CompactCounts(str(counts))
    assert table["of the"] == 7.0 and table["in a"] == 2.0
    assert "in a" in table and "a cat" not in table
    with pytest.raises(KeyError):
        table["a cat"]


def test_hashtags_segment_as_the_package_does_on_its_own_tables():
    import wordsegment

    from mmsent.data.text import _segmenter

    theirs = wordsegment.Segmenter()
    theirs.load()
    for tag in ["thisisatest", "ilovemycat", "nofilter", "tbt", "instagood", "bestdayever", "a1b2c3", "", "x" * 30]:
        assert _segmenter()(tag) == theirs.segment(tag), tag
