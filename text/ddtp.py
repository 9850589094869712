"""English-German parallel text from Debian's package-description translations (DDTP).

The Debian Description Translation Project translates the descriptions of Debian packages. apt
fetches them as index files, one per language (``dists/<suite>/main/i18n/Translation-de``), not as
a .deb. Each entry names the package and the ``Description-md5`` of the English original, so the
English and German files pair by that hash. The short description (first line) of each entry gives
one sentence-sized pair; bookworm main has about 13.9k German entries.

Fetching runs ``apt-get update`` with its own configuration (languages en and de, its own lists
folder, the Packages indexes switched off), so the machine's apt state is left alone; it needs the
network. Offline, :data:`SAMPLE` is a committed sample of 60 real pairs from that source
(bookworm main, fetched 2026-12-01 from deb.debian.org), used by the tests and tiny recipes.

    python -m omnitune.text.ddtp --out /tmp/ddtp-en-de.jsonl        # fetch and pair
    python -m omnitune.text.ddtp --lists /tmp/ddtp/lists --out ...  # pair already fetched files

Licence: the descriptions come from the packages in Debian main (DFSG-free); the translations are
contributed to Debian under the same terms (https://ddtp.debian.org).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
from pathlib import Path

from omnitune.core.base.errors import DataError, OmnituneError

MIRROR = "http://deb.debian.org/debian"
SAMPLE = Path(__file__).with_name("ddtp_en_de_sample.jsonl")

APT_CONF = """Dir::Etc::sourcelist "{root}/sources.list";
Dir::Etc::sourceparts "{root}/parts";
Dir::Etc::parts "{root}/parts";
Dir::State::Lists "{root}/lists";
Dir::Cache "{root}/cache";
Acquire::Languages {{ {languages} }};
Acquire::IndexTargets::deb::Packages::DefaultEnabled "false";
"""


def fetch_indexes(root: Path, languages: tuple[str, ...] = ("en", "de"), suite: str = "bookworm",
                  mirror: str = MIRROR) -> dict[str, Path]:
    """Run ``apt-get update`` into ``root`` (its own config and lists folder); returns language ->
    Translation index file."""
    root = Path(root)
    for sub in ("lists/partial", "parts", "cache/archives/partial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "sources.list").write_text(f"deb {mirror} {suite} main\n")
    conf = root / "apt.conf"
    conf.write_text(APT_CONF.format(root=root, languages=" ".join(f'"{x}";' for x in languages)))
    done = subprocess.run(["apt-get", "update"], env={"APT_CONFIG": str(conf), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise OmnituneError(f"apt-get update for DDTP failed: {done.stderr.strip().splitlines()[-1:]}")
    return find_indexes(root / "lists", languages)


def find_indexes(lists: Path, languages: tuple[str, ...] = ("en", "de")) -> dict[str, Path]:
    found = {}
    for lang in languages:
        matches = sorted(Path(lists).glob(f"*_i18n_Translation-{lang}"))
        if not matches:
            raise DataError(f"{lists}: no Translation-{lang} index (fetch with fetch_indexes first)")
        found[lang] = matches[0]
    return found


def parse_index(path: Path, lang: str) -> dict[str, dict[str, str]]:
    """Description-md5 -> {"package", "short", "long"} for one Translation-<lang> file (deb822
    stanzas; the long description's continuation lines start with a space, " ." is a blank line)."""
    out: dict[str, dict[str, str]] = {}
    key = f"Description-{lang}:"
    for stanza in Path(path).read_text(encoding="utf-8").split("\n\n"):
        fields: dict[str, str] = {}
        long_lines: list[str] = []
        in_description = False
        for line in stanza.splitlines():
            if line.startswith(key):
                fields["short"] = line[len(key):].strip()
                in_description = True
            elif line.startswith(" ") and in_description:
                long_lines.append("" if line.strip() == "." else line.strip())
            else:
                in_description = False
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        if "Description-md5" in fields and fields.get("short"):
            out[fields["Description-md5"]] = {"package": fields.get("Package", ""), "short": fields["short"],
                                              "long": "\n".join(long_lines).strip()}
    return out


def pair(en: dict[str, dict[str, str]], de: dict[str, dict[str, str]]) -> tuple[list[dict[str, str]], dict[str, int]]:
    """English/German short-description pairs joined on Description-md5; drops (counted) German
    entries without an English original, untranslated ones (German == English) and repeats of an
    English sentence already paired."""
    rows, counts, seen = [], {"no English original": 0, "not translated": 0, "repeated English": 0}, set()
    for md5 in sorted(de):
        if md5 not in en:
            counts["no English original"] += 1
            continue
        source, target = en[md5]["short"], de[md5]["short"]
        if source.strip().lower() == target.strip().lower():
            counts["not translated"] += 1
            continue
        if source in seen:
            counts["repeated English"] += 1
            continue
        seen.add(source)
        rows.append({"en": source, "de": target, "package": de[md5]["package"], "description_md5": md5})
    return rows, counts


def write_parallel(lists: Path, out: Path, max_pairs: int | None = None, seed: int = 0) -> dict[str, int]:
    """Pair the fetched indexes in ``lists`` and write JSON lines (en, de, package,
    description_md5) to ``out``, a seeded sample of ``max_pairs`` when given. Returns the counts."""
    files = find_indexes(lists)
    rows, counts = pair(parse_index(files["en"], "en"), parse_index(files["de"], "de"))
    counts["pairs"] = len(rows)
    if max_pairs is not None and max_pairs < len(rows):
        rows = sorted(random.Random(seed).sample(rows, max_pairs), key=lambda r: r["package"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    counts["written"] = len(rows)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON lines file to write")
    parser.add_argument("--lists", type=Path, help="already fetched lists folder (skip apt-get update)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/omnitune-ddtp"), help="apt folder for the fetch")
    parser.add_argument("--suite", default="bookworm")
    parser.add_argument("--max-pairs", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    lists = args.lists or fetch_indexes(args.root, suite=args.suite)["en"].parent
    print(json.dumps(write_parallel(lists, args.out, args.max_pairs, args.seed)))


if __name__ == "__main__":
    main()
