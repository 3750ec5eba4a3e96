"""References to a numbered section ("lecture 13, section 7", "section 4.1") point at a section that exists and
is about what the citing text is about.

A reference to another lecture's section must be listed in :data:`CITATIONS` with a word of the citing text
and a word of the heading it should land on: renumbering a lecture, or citing the wrong number, fails here
instead of sending a learner to the wrong place. A bare "section N" in a lecture must be one of its own
numbered headings; the labs never cite their own parts by number (labs 03 and 04 number them, the others
name Exercises), so a bare one there is a lecture's with its number lost. Every lecture, lab and Exercise named
in the notebooks, solutions, README and docs must exist.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LECTURES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("lab[0-9][0-9]_*.ipynb"))

#: (citing notebook, cited lecture) -> [(a word beside the citation, a word the cited section's heading contains)]
CITATIONS = {
    ("lab09_fix_export_conversion", "11"): [("extract_model", "diverge")],
    ("lab10_language_model_budget", "13"): [("held out", "language model"),
                                            ("attention", "changes for a transformer"),
                                            ("attention", "KV cache"),
                                            ("MatMulNBits", "Quantisation"),
                                            ("bandwidth", "ceiling")],
    ("14_llm_runtimes_on_device", "13"): [("eager", "changes for a transformer"), ("fusion", "Fusions")],
}

NUMBER = r"\d+(?:\.\d+)*"
#: "lecture 13, section 7", "lecture 13 section 7", "lecture 13's section 7", "lecture 13, sections 7 and 8"
CROSS = re.compile(rf"\b(?:lecture|notebook)\s+(\d{{1,2}})(?:'s)?,?\s+sections?\s+({NUMBER}(?:(?:\s*,\s*|\s+and\s+|-)"
                   rf"{NUMBER})*)", re.I)
#: "section 7 of lecture 13"
CROSS_AFTER = re.compile(rf"\bsections?\s+({NUMBER}(?:(?:\s*,\s*|\s+and\s+|-){NUMBER})*)\s+of\s+(?:lecture|notebook)\s+"
                         r"(\d{1,2})\b", re.I)
#: "lecture 13's fusion tools (its section 6)": the section of the lecture named last before it
ITS = re.compile(rf"\bits\s+sections?\s+({NUMBER}(?:(?:\s*,\s*|\s+and\s+|-){NUMBER})*)", re.I)
LAST_LECTURE = re.compile(r"\b(?:lecture|notebook)s?\s+(\d{1,2})\b", re.I)
SENTENCE_END = re.compile(r"[.!?]\s|\n\n")
BARE = re.compile(rf"\bsections?\s+({NUMBER}(?:(?:\s*,\s*|\s+and\s+){NUMBER})*)", re.I)
HEADING = re.compile(rf"^#{{2,4}}\s+({NUMBER})\.?\s+(.+?)\s*$", re.M)


def cells(path: Path) -> list[str]:
    return ["".join(cell["source"]) for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]]


def markdown(path: Path) -> list[str]:
    return ["".join(cell["source"]) for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]
            if cell["cell_type"] == "markdown"]


def headings(path: Path) -> dict[str, str]:
    """Section number -> heading text, for the numbered ``##``/``###`` headings of a notebook."""
    found: dict[str, str] = {}
    for text in markdown(path):
        for number, title in HEADING.findall(text):
            found.setdefault(number, title)
    return found


def lecture(number: str) -> Path:
    matches = [path for path in LECTURES if path.name.startswith(f"{int(number):02d}_")]
    assert len(matches) == 1, f"no lecture {number} in notebooks/"
    return matches[0]


def numbers(listed: str) -> list[str]:
    return re.findall(NUMBER, listed)


def context(text: str, start: int, end: int) -> str:
    """The paragraph or list item holding a reference."""
    before = max(text.rfind("\n\n", 0, start), text.rfind("\n- ", 0, start), text.rfind("\n#", 0, start))
    after = [i for i in (text.find("\n\n", end), text.find("\n- ", end)) if i != -1]
    return text[before + 1 if before >= 0 else 0:min(after) if after else len(text)]


def cross_references(path: Path) -> list[tuple[str, list[str], str, tuple[int, int]]]:
    """(cited lecture, cited section numbers, citing paragraph, span) for each reference to another lecture."""
    found = []
    for text in cells(path):
        for match in CROSS.finditer(text):
            found.append((match.group(1), numbers(match.group(2)), context(text, *match.span()), match.span()))
        for match in CROSS_AFTER.finditer(text):
            found.append((match.group(2), numbers(match.group(1)), context(text, *match.span()), match.span()))
        for match in ITS.finditer(text):
            found.append((its_lecture(text, match.start()), numbers(match.group(1)), context(text, *match.span()),
                          match.span()))
    return found


def its_lecture(text: str, at: int) -> str | None:
    """The lecture an "its section N" at ``at`` belongs to: the last one named earlier in the same sentence
    (None when the sentence names none: "the docs (its section 3)" is no lecture's)."""
    sentence = text[:at]
    ends = [m.end() for m in SENTENCE_END.finditer(sentence)]
    named = LAST_LECTURE.findall(sentence[ends[-1] if ends else 0:])
    return named[-1] if named else None


def bare_references(path: Path) -> list[tuple[list[str], str]]:
    """(section numbers, the text around it) for each "section N" that names no lecture."""
    found = []
    for text in cells(path):
        taken = [m.span() for pattern in (CROSS, CROSS_AFTER, ITS) for m in pattern.finditer(text)]
        for match in BARE.finditer(text):
            if any(a <= match.start() < b for a, b in taken):
                continue
            found.append((numbers(match.group(1)), text[max(0, match.start() - 60):match.end() + 30]))
    return found


CITING = [path for path in LECTURES + SOLUTIONS if cross_references(path)]


def test_the_scan_finds_what_it_should():
    assert len(LECTURES) >= 15 and len(SOLUTIONS) >= 10
    assert headings(lecture("13"))["7"].startswith("Quantisation") and headings(lecture("6"))["2.4"]
    sample = "- int4 with `MatMulNBits` (lecture 13, sections 7 and 8); and see section 2 of lecture 11.\n\nNext."
    path_refs = [(m.group(1), numbers(m.group(2))) for m in CROSS.finditer(sample)]
    assert path_refs == [("13", ["7", "8"])]
    assert [(m.group(2), numbers(m.group(1))) for m in CROSS_AFTER.finditer(sample)] == [("11", ["2"])]
    assert "MatMulNBits" in context(sample, sample.index("lecture"), sample.index(");"))
    assert any(path.name.startswith("lab10") for path in CITING)
    its = "lecture 13's fusion tools (its section 6) treat both alike"
    assert [(its_lecture(its, m.start()), numbers(m.group(1))) for m in ITS.finditer(its)] == [("13", ["6"])]
    other = "As lecture 12 showed. ONNX Runtime's docs (its section 3) say so; notebook 13's loop (its section 6)"
    assert [its_lecture(other, m.start()) for m in ITS.finditer(other)] == [None, "13"]
    assert not [m for m in BARE.finditer(its) if not any(a <= m.start() < b for a, b in [x.span() for x in ITS.finditer(its)])]


@pytest.mark.parametrize("path", CITING, ids=lambda p: p.stem)
def test_references_to_another_lecture_land_on_the_right_section(path):
    for cited, sections, paragraph, _ in cross_references(path):
        assert cited is not None, (f"{path.stem}: 'its section' with no lecture named before it in the sentence "
                                   f"({paragraph.strip()[:120]!r}): name the lecture")
        listed = CITATIONS.get((path.stem, cited))
        assert listed, (f"{path.stem} cites lecture {cited} ({paragraph.strip()[:120]!r}): add its (word beside the "
                        f"citation, word of the cited heading) to CITATIONS")
        titles = headings(lecture(cited))
        for section in sections:
            assert section in titles, (f"{path.stem} cites lecture {cited}, section {section}, which does not exist "
                                       f"(its sections: {', '.join(titles)})")
        expected = [heading for word, heading in listed if word.lower() in paragraph.lower()]
        assert expected, (f"{path.stem}: no CITATIONS entry for lecture {cited} matches the text citing it "
                          f"({paragraph.strip()[:160]!r})")
        landed = [titles[section] for section in sections]
        assert any(word.lower() in title.lower() for word in expected for title in landed), (
            f"{path.stem} cites lecture {cited}, section(s) {', '.join(sections)} ({landed}) for "
            f"{paragraph.strip()[:160]!r}, which is about {expected}: cite the section whose heading says so")


@pytest.mark.parametrize("path", LECTURES, ids=lambda p: p.stem)
def test_a_lecture_refers_to_its_own_sections(path):
    titles = headings(path)
    for sections, around in bare_references(path):
        for section in sections:
            assert section in titles, (f"{path.stem} refers to section {section} ({around!r}), which it does not have "
                                       f"(its sections: {', '.join(titles)})")


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_a_lab_names_the_lecture_of_a_section(path):
    bare = bare_references(path)
    assert not bare, f"{path.stem} refers to a section without naming its lecture: {bare}"


# --- Lectures, labs and exercises named anywhere a learner reads -------------------------------------------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LECTURE_NAME = re.compile(r"\blectures?\s+(\d{1,2})(?:\s*(?:-|–|to|and|,)\s*(\d{1,2}))*", re.I)
LAB_NAME = re.compile(r"\blabs?\s+(\d{1,2})\b", re.I)
EXERCISE = re.compile(r"\bExercises?\s+(\d+)\b")
EXERCISE_HEADING = re.compile(r"^##\s+Exercise\s+(\d+)\b", re.M)
#: Lectures and labs the course plans but has not written (named as future work where they appear).
PLANNED = {"lecture": set(range(15, 19)), "lab": set(range(11, 14))}


def texts(path: Path) -> list[str]:
    return cells(path) if path.suffix == ".ipynb" else [path.read_text(encoding="utf-8")]


def lab_numbers() -> set[int]:
    return {int(path.name[3:5]) for path in SOLUTIONS}


@pytest.mark.parametrize("path", LECTURES + SOLUTIONS + DOCS, ids=lambda p: p.stem)
def test_every_lecture_and_lab_named_exists(path):
    lectures = {int(p.name[:2]) for p in LECTURES}
    for text in texts(path):
        for match in LECTURE_NAME.finditer(text):
            for number in (int(n) for n in re.findall(r"\d{1,2}", match.group(0))):
                assert number in lectures | PLANNED["lecture"], (
                    f"{path.name} names lecture {number} ({text[max(0, match.start() - 60):match.end() + 40]!r}), "
                    "which does not exist")
        for match in LAB_NAME.finditer(text):
            number = int(match.group(1))
            assert number in lab_numbers() | PLANNED["lab"], (
                f"{path.name} names lab {number} ({text[max(0, match.start() - 60):match.end() + 40]!r}), which does not exist")


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_a_lab_names_only_its_own_exercises(path):
    own = {int(n) for text in markdown(path) for n in EXERCISE_HEADING.findall(text)}
    # (labs 03 and 04 number their sections instead: there, any unqualified "Exercise N" is wrong)
    for text in cells(path):
        for match in EXERCISE.finditer(text):
            before = text[max(0, match.start() - 25):match.start()].lower()
            if re.search(r"\blab\s*\d{1,2}'?s?\s*$|\blecture\s*\d{1,2}'?s?\s*$", before):
                continue  # another lab's or lecture's exercise
            assert int(match.group(1)) in own, (
                f"{path.stem} names Exercise {match.group(1)} ({text[max(0, match.start() - 60):match.end() + 40]!r}); "
                f"its exercises are {sorted(own)}")


def test_the_name_scans_catch_wrong_names(tmp_path):
    lab = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["## Exercise 1: a\n\nSee Exercise 9 and lab 42."]}],
           "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "lab99_made_up.ipynb"
    path.write_text(json.dumps(lab))
    own = {int(n) for text in markdown(path) for n in EXERCISE_HEADING.findall(text)}
    named = [int(m.group(1)) for text in cells(path) for m in EXERCISE.finditer(text)]
    assert own == {1} and 9 in named  # Exercise 9 would fail the lab test
    assert [int(m.group(1)) for m in LAB_NAME.finditer(cells(path)[0])] == [42] and 42 not in lab_numbers() | PLANNED["lab"]
    assert [int(n) for n in re.findall(r"\d{1,2}", LECTURE_NAME.search("lectures 13-14 and").group(0))] == [13, 14]


# --- Sections named by their heading ("lecture 07, "The ORT format"") -------------------------------------

#: "lecture 07, "The ORT format"", "Lecture 07 ("The ORT format")", "lecture 07's "Cold start""
NAMED_SECTION = re.compile(r"\blectures?\s+(\d{1,2})(?:'s)?,?\s*\(?\s*[\"“]([^\"”\n]{3,80})[\"”]", re.I)
#: ""The ORT format" in lecture 07", "“Sampling” of lecture 13", ""Cold start" section in lecture 05"
#: (a heading starts with a capital letter: "the option "8da4w" in lecture 14" names no section)
NAMED_SECTION_AFTER = re.compile(r"[\"“]([A-Z][^\"”\n]{2,79})[\"”],?\s+(?:section\s+)?(?:in|of)\s+[Ll]ectures?\s+(\d{1,2})\b")
ANY_HEADING = re.compile(r"^#{1,4}\s+(.+?)\s*$", re.M)


def heading_titles(path: Path) -> list[str]:
    """Every heading of a notebook, without its number and Markdown code marks, lower case."""
    return [re.sub(rf"^{NUMBER}\.?\s+", "", title).replace("`", "").lower()
            for text in markdown(path) for title in ANY_HEADING.findall(text)]


def named_sections(text: str) -> list[tuple[str, str]]:
    """(lecture number, quoted heading) for each section a text names by its heading."""
    return ([(m.group(1), m.group(2)) for m in NAMED_SECTION.finditer(text)]
            + [(m.group(2), m.group(1)) for m in NAMED_SECTION_AFTER.finditer(text)])


def test_the_heading_scan_finds_quoted_names():
    assert named_sections('(lecture 07, "The ORT format")') == [("07", "The ORT format")]
    assert named_sections('Lecture 07 ("The ORT format") says') == [("07", "The ORT format")]
    assert named_sections("lecture 13's “Sampling” section") == [("13", "Sampling")]
    assert named_sections('see "The ORT format" in lecture 07') == [("07", "The ORT format")]
    assert named_sections("“Sampling” section of lecture 13") == [("13", "Sampling")]
    assert named_sections('the option "8da4w" in lecture 14, the word "cache" in lecture 13') == []
    assert "the ort format (.ort)" in heading_titles(lecture("07"))
    assert not any(t.startswith("the ort formats") for t in heading_titles(lecture("07")))  # a wrong name would fail


@pytest.mark.parametrize("path", LECTURES + SOLUTIONS + DOCS, ids=lambda p: p.stem)
def test_a_section_named_by_its_heading_exists(path):
    for text in texts(path):
        for number, name in named_sections(text):
            titles = heading_titles(lecture(number))
            wanted = name.replace("`", "").lower().strip()
            assert any(title.startswith(wanted) for title in titles), (
                f"{path.name} names lecture {number}'s section {name!r}, which is not one of its headings: "
                f"{[t for t in titles][:30]}")
