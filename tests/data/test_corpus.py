"""Tests of lmkernels.data, the default corpus built from standard-library docstrings."""

import hashlib
import os
import subprocess
import sys

import pytest

from lmkernels import data


def test_repeated_calls_give_equal_results():
    assert data.documents("all") == data.documents("all")
    assert data.text() == data.text()


def test_returned_list_is_a_copy():
    docs = data.documents()
    docs.clear()
    assert data.documents()


def test_text_is_the_same_in_another_process_with_another_hash_seed(tmp_path):
    # Run the module file on its own (not the lmkernels package, which imports torch) to keep
    # the test fast, from another working directory.
    script = (
        "import hashlib, runpy, sys\n"
        "text = runpy.run_path(sys.argv[1])['text']\n"
        "print(hashlib.md5(text('all').encode()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", script, data.__file__],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    assert result.stdout.strip() == hashlib.md5(data.text("all").encode()).hexdigest()


def test_train_and_heldout_partition_all():
    train, heldout, everything = (data.documents(split) for split in data.SPLITS)
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(everything)
    assert len(train) + len(heldout) == len(everything)


def test_heldout_is_about_a_tenth():
    assert 0.05 <= len(data.documents("heldout")) / len(data.documents("all")) <= 0.15
    assert 0.05 <= len(data.text("heldout")) / len(data.text("all")) <= 0.15


def test_documents_are_non_empty_and_stripped():
    for doc in data.documents("all"):
        assert doc.name and doc.text
        assert doc.text == doc.text.strip(), doc.name


def test_documents_are_named_by_qualified_name():
    names = {doc.name for doc in data.documents("all")}
    assert "json.decoder.JSONDecoder.raw_decode" in names


def test_text_joins_documents_with_separator():
    heldout = [doc.text for doc in data.documents("heldout")]
    assert data.text("heldout") == "\n\n".join(heldout)
    assert data.text("heldout", separator="\n") == "\n".join(heldout)


def test_train_text_is_large_enough():
    assert len(data.text().encode()) >= 500_000


@pytest.mark.parametrize("function", [data.documents, data.text])
def test_unknown_split_is_rejected(function):
    with pytest.raises(ValueError, match="split"):
        function("test")


def test_every_listed_module_exists():
    # Missing modules are skipped silently at run time, so catch typos in the list here.
    assert [m for m in data._MODULES if data._source(m) is None] == []


def test_paragraphs_split_on_blank_lines_and_can_join_wrapped_lines():
    text = "  First line\n    wrapped.\n\n\n\nSecond.\n\n   \n\n"
    assert data.paragraphs(text) == ["First line\n    wrapped.", "Second."]
    assert data.paragraphs(text, one_line=True) == ["First line wrapped.", "Second."]
    assert data.paragraphs("") == []
