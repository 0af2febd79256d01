"""The repository describes the product, not how it was made: no tracked file (this one included)
speaks of the way the work was organised, the hardware it ran on for a while, the tools it was
written with, the reference numbers of its to-do list or the folders of the machines it was written
on. Text files only.

The patterns, and the lines the test checks them on, are stored ROT13-encoded (`_decoded`), so that
this file does not itself hold the words it looks for; `python -c "import codecs; print(codecs.decode(
'...', 'rot13'))"` shows one. Technical uses of the same words (pytest's scopes and hooks,
onnxruntime's API, process groups, file locks) pass: `test_technical_uses_pass`, its lines encoded too.
"""

from __future__ import annotations

import codecs
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _decoded(text: str) -> str:
    return codecs.decode(text, "rot13")


# What each pattern finds -> the pattern, ROT13-encoded (case-insensitive once decoded).
_WORDS_ROT13: dict[str, str] = {
    "wording of time-boxed work": (
        "\\o(?:guvf|gung|bar|rnpu|rirel|cre|cerivbhf|arkg|rneyvre|yngre|ynfg|svefg|frpbaq|"
        "guveq|fnzr|bgure|nabgure|jubyr|pheerag|jbex|jbexvat|qrirybczrag|pbqvat)\\f+frffvb"
        "a\\o(?!-)|(?<!grfg )\\ofrffvba(?:'f|f)\\o|\\ofrffvba\\f+\\q"
    ),
    "calendar wording": "\\ojbex(?:vat)?[- ](?:crevbq|qnl|oybpx|fuvsg)f?\\o|\\ofcevagf?\\o",
    "wording of temporary hardware": (
        "\\oyrnfr[fq]?\\o|\\oyrag\\o|\\oybna(?:f|rq)?\\o|\\oabg qenja\\o|\\oqrivpr[- ]gvzr\\o|\\ogur"
        " qrivpr gbby\\o"
    ),
    "names of authoring tools": (
        "\\opynhqr\\o|\\onaguebcvp\\o|\\ofho-?ntragf?\\o|\\ourycre ntragf?\\o|\\o(?:pbqvat|nv) (?:"
        "ntrag|nffvfgnag)f?\\o|\\opungtcg\\o|\\opbcvybg\\o"
    ),
    "to-do list references": (
        "\\ovffhrf?\\f+#?\\q+|\\ovffhr\\f*#|\\ogur vffhr'f\\o|\\o(?:gur|guvf|gung|na?) vffhr (?:n"
        "fxf|nfxrq|fnlf|fnvq|jnagf|jnagrq|erdhverf|erdhverq|frgf|frg|pnyyf|gnetrgf|one)\\o"
    ),
    "paths of the authoring machines": "(?<![\\j.~-])/(?:jbex|ebbg)/|(?<![\\j.~-])/ubzr/[\\j.-]+",
}
WORDS = {what: _decoded(pattern) for what, pattern in _WORDS_ROT13.items()}
PATTERNS = {what: re.compile(pattern, re.IGNORECASE) for what, pattern in WORDS.items()}


def hits(line: str) -> list[str]:
    """What `line` mentions of the development (the WORDS keys of its matches)."""
    return [what for what, pattern in PATTERNS.items() if pattern.search(line)]


# Technical uses of the same words, ROT13-encoded like the patterns.
@pytest.mark.parametrize(
    "line",
    [
        "@clgrfg.svkgher(fpbcr='frffvba')",
        '@clgrfg.svkgher(fpbcr="frffvba")',
        "frffvba = beg.VasreraprFrffvba(cngu, cebivqref=['PCHRkrphgvbaCebivqre'])",
        "cebonovyvgvrf = frffvba.eha(['cebonovyvgvrf'], {'vzntrf': snprf})[0]",
        "bcgvbaf = baakehagvzr.FrffvbaBcgvbaf()",
        "fhocebprff.Cbcra(netf, fgneg_arj_frffvba=Gehr)",
        "qrs clgrfg_frffvbasvavfu(frffvba):",
        "rnpu kqvfg jbexre jevgrf vgf svyr ng gur raq bs gur grfg frffvba",
        "Erpbeq (rnpu kqvfg jbexre jevgrf CERSVK_<jbexre>.wfba ng gur raq bs gur frffvba):",
        "znqr bapr cre grfg cebprff, va n frffvba grzcbenel sbyqre (gzc_cngu_snpgbel)",
        "znqr bapr cre grfg frffvba, va gur grfg frffvba'f grzcbenel sbyqre",
        "gur xreary eryrnfrf gur ybpx jura gur ubyqre qvrf; eryrnfrq, eryrnfr(sq)",
        "gur ongpurq rdhvinyrag bs gur nhtzragngvba; na vffhr jvgu gur qngn cngu",
        "--jbexqve jbexqvef/eha --pbasvt.qngn.cngu=../funerq/qngn/sre2013/sre2013.pfi.tm",
        "frr uggcf://rknzcyr.bet/jbex/sre naq $JBEXQVE/purpxcbvagf",
        "svgf gur erpvcr'f gvzr ohqtrg ba 2 PCH pberf",
    ],
)
def test_technical_uses_pass(line):
    assert hits(_decoded(line)) == []


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("Zrnfherq va guvf frffvba, dhvrg znpuvar", "wording of time-boxed work"),
        ("gur cerivbhf frffvba'f svtherf", "wording of time-boxed work"),
        ("(2026-11-29, frffvba 3)", "wording of time-boxed work"),
        ("bgure frffvbaf funerq gur znpuvar", "wording of time-boxed work"),
        ("URER, bapr cre frffvba: qbjaybnqf gur jurryf", "wording of time-boxed work"),
        ("gur gvzr bs bar jbex crevbq", "calendar wording"),
        ("gur frpbaq U200 yrnfr", "wording of temporary hardware"),
        ("Ab TCH jnf yrag gb guvf eha", "wording of temporary hardware"),
        ("15 zvahgrf bs qrivpr gvzr va nyy", "wording of temporary hardware"),
        ("qrivpr fgnghf: abg qenja", "wording of temporary hardware"),
        ("jevggra jvgu Pynhqr", "names of authoring tools"),
        ("n fhontrag zrnfherq vg", "names of authoring tools"),
        ("gur urycre ntrag'f ercbeg", "names of authoring tools"),
        ("vffhr 19 (qvfgvyyngvba)", "to-do list references"),
        ("Vffhr #6'f one", "to-do list references"),
        ("gur vffhr'f one, 0.66 va 30 zvahgrf", "to-do list references"),
        ("(26k; gur vffhr nfxf 5k)", "to-do list references"),
        ("tvg pybar /jbex/znva P", "paths of the authoring machines"),
        ("--jbexqve /ebbg/ehaf/erpvcr", "paths of the authoring machines"),
        ("pq /ubzr/nyvpr/sre", "paths of the authoring machines"),
    ],
)
def test_development_words_are_found(line, what):
    assert what in hits(_decoded(line))


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary (or missing) file."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None  # deleted in the work tree, or a submodule
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_no_tracked_file_describes_the_development():
    found = []
    for name in _tracked_files():
        text = _text(ROOT / name)
        for number, line in enumerate((text or "").splitlines(), start=1):
            for what in hits(line):
                found.append(f"{name}:{number}: {what}: {line.strip()[:120]}")
    if found:
        pytest.fail(f"{len(found)} line(s) describe the development, not the product:\n" + "\n".join(found))
