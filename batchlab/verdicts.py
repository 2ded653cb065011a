"""Verdicts on the post's claims (REFERENCE 1) as data: which claim, whether it holds
here, why, and the numbers behind it. A leaf module: families build Verdicts, the sweep
prints their lines, the report tabulates them."""

import dataclasses
from collections.abc import Mapping

HOLDS = "holds"
CAVEAT = "holds with a caveat"
FAILS = "does not hold here"
UNTESTABLE = "cannot be tested on this device"
NOT_MEASURED = "not measured in these results"
NOT_JUDGED = "not judged"  # results exist, but no verdict function is registered
STATUSES = (HOLDS, CAVEAT, FAILS, UNTESTABLE, NOT_MEASURED, NOT_JUDGED)
TESTED = (HOLDS, CAVEAT, FAILS)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One claim judged on one series (or on a whole device when `subject` is empty)."""

    claim: str  # "C1".."C9"
    status: str  # one of STATUSES
    summary: str  # the reason, one line, with the key numbers in words
    subject: str = ""  # the series or setup judged, e.g. "mlp depth=8 width=1024 float32"
    numbers: Mapping[str, float | int | str | None] = dataclasses.field(default_factory=dict)
    lines: tuple[str, ...] = ()  # what a sweep prints for it (Family.verdicts)
    caveats: tuple[str, ...] = ()  # why a claim that holds holds only with a caveat

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"{self.claim}: unknown verdict status {self.status!r}")

    @property
    def text(self) -> str:
        """The summary and its caveats, one line."""
        return self.summary + "".join(f"; caveat: {c}" for c in self.caveats)


def judged(
    claim: str,
    holds: bool,
    summary: str,
    caveats=(),
    subject: str = "",
    numbers: Mapping | None = None,
    lines=(),
) -> Verdict:
    """A tested claim: FAILS unless it holds; HOLDS or, with caveats, CAVEAT. A claim
    that does not hold keeps its caveats as context."""
    status = (CAVEAT if caveats else HOLDS) if holds else FAILS
    return Verdict(
        claim, status, summary, subject, dict(numbers or {}), tuple(lines), tuple(caveats)
    )


def unstable_caveat(points: list[dict]) -> list[str]:
    """A caveat when timing flagged half the points or more as unstable (IQR/median above
    the target): on a shared machine a few always are."""
    n = sum(bool(r["time"].get("unstable")) for r in points)
    return [f"{n} of {len(points)} points unstable (noisy timing)"] if 2 * n >= len(points) else []


def lines(*verdict_lists: list[Verdict]) -> list[str]:
    """The printed lines of several verdict lists, in order."""
    return [line for vs in verdict_lists for v in vs for line in v.lines]


def common_words(subjects) -> str:
    """The words every subject has, in the order of the first."""
    subjects = list(subjects)
    if not subjects:
        return ""
    common = set.intersection(*(set(s.split()) for s in subjects))
    return " ".join(w for w in subjects[0].split() if w in common)


def short_subjects(subjects) -> dict[str, str]:
    """Each subject without the words every subject shares ("layers=1 float32"), so that
    a table of series reads as what differs between them."""
    subjects = list(dict.fromkeys(subjects))
    if len(subjects) < 2:
        return {s: s for s in subjects}
    common = set(common_words(subjects).split())
    short = {s: " ".join(w for w in s.split() if w not in common) for s in subjects}
    return {s: short[s] or s for s in subjects}


def combine(claim: str, parts: list[Verdict], max_caveats: int = 3) -> Verdict:
    """One verdict for a device from the verdicts of its series.

    Among tested series: all hold -> HOLDS; all hold, some with caveats -> CAVEAT; some
    hold and some not -> CAVEAT when at least half hold, else FAILS (the summary says
    which); none hold -> FAILS. With no tested series: UNTESTABLE if any series says
    so, else NOT_JUDGED or NOT_MEASURED. Caveats are gathered, the first few kept.
    """
    tested = [v for v in parts if v.status in TESTED]
    if not tested:
        for s in (UNTESTABLE, NOT_JUDGED, NOT_MEASURED):
            same = [v for v in parts if v.status == s]
            if same:
                return dataclasses.replace(same[0], subject="", lines=())
        return Verdict(claim, NOT_MEASURED, "no results for this claim")
    if len(tested) == 1:
        return dataclasses.replace(tested[0], subject="", lines=())
    good = [v for v in tested if v.status != FAILS]
    bad = [v for v in tested if v.status == FAILS]
    name = short_subjects(v.subject for v in tested)
    caveats = [f"{name[v.subject]}: {c}" for v in good for c in v.caveats]
    if len(caveats) > max_caveats:
        caveats = caveats[:max_caveats] + [f"{len(caveats) - max_caveats} more"]
    if not bad:
        status = CAVEAT if caveats else HOLDS
        summary = (
            f"holds for all {len(tested)} series; e.g. {name[tested[0].subject]}: "
            f"{tested[0].summary}"
        )
    else:
        status = FAILS if not good or len(good) < len(bad) else CAVEAT
        summary = (
            f"holds for {len(good)} of {len(tested)} series; not for "
            + ", ".join(name[v.subject] for v in bad)
            + f" ({bad[0].summary})"
        )
    numbers = {"series": len(tested), "series_holding": len(good)}
    return Verdict(claim, status, summary, "", numbers, (), tuple(caveats))
